"""Times segbench's rule in DuckDB over the customers CSV segbench wrote.

Prints the median milliseconds of seven runs and the number of matches. The load is not timed;
`age < 40` is written as DuckDB would be asked it: born after today minus 40 years.
"""

import statistics
import sys
import time

import duckdb

con = duckdb.connect()
con.execute(f"CREATE TABLE c AS SELECT * FROM read_csv_auto('{sys.argv[1]}')")
query = """
    SELECT count(*) FROM c
    WHERE spent > 500 AND gender = 'F' AND birth_date > current_date - INTERVAL 40 YEAR
"""
runs = []
count = 0
for _ in range(7):
    t = time.perf_counter()
    count = con.execute(query).fetchone()[0]
    runs.append((time.perf_counter() - t) * 1000)
print(f"{statistics.median(runs):.2f} {count}")
