"""`make bench`: how fast rds-migrations is next to the tools and the floor it is measured against.

Every figure is measured side by side in the same run on the same throwaway PostgreSQL server and reported
as an absolute time and a ratio. See BENCHMARKS.md for what each number means.
"""
