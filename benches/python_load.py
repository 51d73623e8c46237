"""The Python client's load_customers, column by column against Customer messages: the
client's CPU time and the wall time per 50,000 customers, alternating three rounds each (medians).

    pip install ./clients/python && python benches/python_load.py target/release/segmentd
"""
import datetime as dt, subprocess, sys, tempfile, time, resource
import segmentd.client as sc
from segmentd import Client
def customers(n, off):
    for i in range(n):
        yield {"customer_id": f"C{off+i}", "email": f"c{off+i}@example.com",
               "attributes": {"gender": "F" if i % 2 == 0 else "M", "household_size": 1 + i % 5,
                              "birth_date": dt.date(1960 + i % 40, 1 + i % 12, 1 + i % 28),
                              "country": ["FR", "DE", "ES"][i % 3], "tags": ["golf"] if i % 10 == 0 else []}}
with __import__("socket").socket() as s_:
    s_.bind(("127.0.0.1", 0))
    port = s_.getsockname()[1]
d = tempfile.mkdtemp()
p = subprocess.Popen([sys.argv[1], "--listen", f"127.0.0.1:{port}", "--data-dir", d, "--fsync", "never"], stderr=subprocess.DEVNULL)
time.sleep(1)
c = Client(f"127.0.0.1:{port}", timeout=60)
orig = sc.to_columns
res = {"columns": [], "messages": []}
off = 0
for rnd in range(3):
    for mode in ("columns", "messages"):
        sc.to_columns = orig if mode == "columns" else (lambda b: None)
        t0 = time.process_time(); w0 = time.perf_counter()
        c.load_customers(customers(50000, off), batch_size=1000); off += 50000
        res[mode].append((time.process_time() - t0, time.perf_counter() - w0))
for m, v in res.items():
    cpu = sorted(x[0] for x in v)[1]; wall = sorted(x[1] for x in v)[1]
    print(f"{m}: client CPU median {cpu:.2f} s, wall {wall:.2f} s per 50,000 customers")
p.terminate()
