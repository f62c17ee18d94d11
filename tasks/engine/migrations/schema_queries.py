"""The catalog queries schema.py reads a database's user schema with: one set-based query per kind of object,
never one per table. Each row starts with the (schema, table) that `ignore` is matched against; the rest is
what schema.py's builder for that kind takes, in order."""

USER_SCHEMA = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"


def _not_member(catalog: str, oid: str) -> str:
    """Not an object an extension created (its members are left out: the extension is compared instead)."""
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend x WHERE x.classid = '{catalog}'::regclass AND x.objid = {oid} "
            "AND x.deptype = 'e')")


def _of_tables(joins: str = "", where: str = "") -> str:
    """FROM user tables (`c`, in schema `n`) and what `joins` hangs off them."""
    return (f"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace {joins}\n"
            f"WHERE {USER_SCHEMA} AND {_not_member('pg_class', 'c.oid')} {where}")


def _collation(oid: str) -> str:
    return (f"(SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co "
            f"JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = {oid})")


SCHEMAS = f"""
SELECT NULL, NULL, quote_ident(n.nspname) FROM pg_namespace n
WHERE {USER_SCHEMA} AND {_not_member('pg_namespace', 'n.oid')}"""

EXTENSIONS = """
SELECT NULL, NULL, quote_ident(e.extname), quote_ident(n.nspname), e.extversion
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"""

# A sequence's owner: the column of a serial or identity column (or of ALTER SEQUENCE ... OWNED BY).
SEQUENCE_OWNER = """LEFT JOIN pg_sequence s ON s.seqrelid = c.oid
LEFT JOIN LATERAL (
    SELECT t.oid, t.relname, tn.nspname, a.attname FROM pg_depend d
    JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
    WHERE c.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.objid = c.oid
      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
) owner ON true"""

COLUMN_JOINS = """JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum"""

RELATIONS = f"""
SELECT coalesce(owner.nspname, n.nspname), coalesce(owner.relname, c.relname),
       c.oid::regclass::text, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
       coalesce(c.reloptions, '{{}}'),
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END,
       ARRAY(SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid ORDER BY i.inhseqno),
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
       format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
       owner.oid::regclass::text, quote_ident(owner.attname), c.relreplident,
       (SELECT x.indexrelid::regclass::text FROM pg_index x WHERE x.indrelid = c.oid AND x.indisreplident)
{_of_tables(SEQUENCE_OWNER, "AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')")}"""

COLUMNS = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, quote_ident(a.attname),
       row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
       format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid),
       a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation THEN {_collation("a.attcollation")} END
{_of_tables(COLUMN_JOINS, "AND c.relkind IN ('r', 'p', 'f')")}"""

CONSTRAINTS = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, quote_ident(k.conname), pg_get_constraintdef(k.oid)
{_of_tables("JOIN pg_constraint k ON k.conrelid = c.oid", "AND k.contype <> 'n'")}"""

INDEXES = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, x.indexrelid::regclass::text, pg_get_indexdef(x.indexrelid),
       x.indisvalid, (SELECT quote_ident(k.conname) FROM pg_constraint k WHERE k.conindid = x.indexrelid
                      AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x'))
{_of_tables("JOIN pg_index x ON x.indrelid = c.oid")}"""

TRIGGERS = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, quote_ident(g.tgname), pg_get_triggerdef(g.oid), g.tgenabled
{_of_tables("JOIN pg_trigger g ON g.tgrelid = c.oid", "AND NOT g.tgisinternal")}"""

# A view's `_RETURN` rule is its definition, compared with the view: only the rules made with CREATE RULE.
RULES = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, quote_ident(r.rulename), pg_get_ruledef(r.oid), r.ev_enabled
{_of_tables("JOIN pg_rewrite r ON r.ev_class = c.oid", "AND r.rulename <> '_RETURN'")}"""

# Extended statistics (CREATE STATISTICS): named in their own schema, like an index; -1 (before 17) or NULL is
# the default target.
STATISTICS = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, quote_ident(sn.nspname) || '.' || quote_ident(s.stxname),
       pg_get_statisticsobjdef(s.oid), nullif(s.stxstattarget, -1)
{_of_tables("JOIN pg_statistic_ext s ON s.stxrelid = c.oid JOIN pg_namespace sn ON sn.oid = s.stxnamespace",
            "AND " + _not_member('pg_statistic_ext', 's.oid'))}"""

POLICIES = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, quote_ident(pol.polname), pol.polcmd, pol.polpermissive,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE quote_ident(pg_get_userbyid(r)) END
             FROM unnest(pol.polroles) r),  -- sorted in Python: ORDER BY here would follow the database's collation
       pg_get_expr(pol.polqual, pol.polrelid), pg_get_expr(pol.polwithcheck, pol.polrelid)
{_of_tables("JOIN pg_policy pol ON pol.polrelid = c.oid")}"""

ROUTINES = f"""
SELECT NULL, NULL, p.oid::regprocedure::text, p.prokind,
       CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END, pg_get_function_result(p.oid),
       g.aggtransfn::oid::regprocedure::text, format_type(g.aggtranstype, NULL),
       nullif(g.aggfinalfn::oid, 0)::regprocedure::text, g.agginitval
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace LEFT JOIN pg_aggregate g ON g.aggfnoid = p.oid
WHERE {USER_SCHEMA} AND {_not_member('pg_proc', 'p.oid')}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'i')  -- made with another object (a range type's constructors)"""

TYPES = f"""
SELECT NULL, NULL, format_type(t.oid, NULL), t.typtype,
       ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
       format_type(t.typbasetype, t.typtypmod), t.typnotnull, pg_get_expr(t.typdefaultbin, 0),
       CASE WHEN t.typcollation <> b.typcollation THEN {_collation("t.typcollation")} END,
       ARRAY(SELECT quote_ident(k.conname) || ' ' || pg_get_constraintdef(k.oid) FROM pg_constraint k
             WHERE k.contypid = t.oid AND k.contype <> 'n' ORDER BY k.conname),
       ARRAY(SELECT quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
             WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       format_type(r.rngsubtype, NULL)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_type b ON b.oid = t.typbasetype LEFT JOIN pg_range r ON r.rngtypid = t.oid
WHERE {USER_SCHEMA} AND {_not_member('pg_type', 't.oid')} AND (t.typtype IN ('e', 'd', 'r')
      OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))"""
