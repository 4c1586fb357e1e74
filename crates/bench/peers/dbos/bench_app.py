"""The DBOS peer of `mbx bench --workload orchestration` (crates/bench/src/peers/dbos.rs).

One workflow per order, started with its order id as workflow id
(`with SetWorkflowID(order): DBOS.start_workflow(...)`): a step calls the bench's quote
service over HTTP, `DBOS.recv()` waits for the order's follow-up (sent with
`DBOS.send_bulk`, i.e. `DBOS.send` of many in one transaction, once the workflow is past
its step), and a datasource transaction (DBOS 3's form of `@DBOS.transaction`) writes the
result. `--migrate` creates the system database's and the datasource's tables and the
results table, then exits; the bench then starts one process per core, each with its own
executor id, and reads one JSON line from each at the end.
"""

import argparse
import http.client
import json
import os
import queue
import sys
import threading
import time

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, SendMessage, SetWorkflowID, SQLAlchemyDatasource

p = argparse.ArgumentParser()
p.add_argument("--url", required=True)
p.add_argument("--migrate", action="store_true")
p.add_argument("--quote-port", type=int, default=0)
p.add_argument("--process", type=int, default=0)
p.add_argument("--warmup", type=float, default=3.0)
p.add_argument("--duration", type=float, default=10.0)
p.add_argument("--window", type=int, default=500)
p.add_argument("--starters", type=int, default=4)
p.add_argument("--rate", type=float, default=0.0)
args = p.parse_args()

config: DBOSConfig = {
    "name": "mbx-bench-dbos",
    "system_database_url": args.url,
    "executor_id": f"mbx-bench-{args.process}",
    "log_level": "WARNING",
    "run_migrations": args.migrate,
}
DBOS(config=config)
ds = SQLAlchemyDatasource.create(args.url, run_migrations=args.migrate)

if args.migrate:
    with ds.engine.begin() as c:
        c.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS bench_results "
                "(order_id text PRIMARY KEY, price integer NOT NULL, approved boolean NOT NULL)"
            )
        )
    DBOS.launch()
    print(json.dumps({"migrated": True}), flush=True)
    os._exit(0)

lock = threading.Lock()
waiting: "queue.Queue[str]" = queue.Queue()
sent_at: dict = {}
state = {"started": 0, "done": 0, "completed": 0, "failed": 0}
latencies: list = []
t0 = time.monotonic()
measure_from = t0 + args.warmup
measure_until = measure_from + args.duration
local = threading.local()


@DBOS.step()
def call_quote(order: str) -> int:
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = local.conn = http.client.HTTPConnection("127.0.0.1", args.quote_port, timeout=30)
    try:
        conn.request(
            "POST",
            "/quote",
            body=json.dumps({"orderId": order}),
            headers={"Content-Type": "application/json"},
        )
        answer = conn.getresponse()
        return int(json.loads(answer.read())["price"])
    except Exception:
        local.conn = None
        raise


@ds.transaction()
def write_result(order: str, price: int, approved: bool) -> None:
    ds.sql_session().execute(
        sa.text("INSERT INTO bench_results (order_id, price, approved) VALUES (:o, :p, :a)"),
        {"o": order, "p": price, "a": approved},
    )


@DBOS.workflow()
def order_workflow(order: str) -> None:
    price = call_quote(order)
    waiting.put(order)  # the bench's side channel: this workflow now waits
    approval = DBOS.recv(timeout_seconds=300)
    write_result(order, price, bool(approval and approval.get("approved")))
    now = time.monotonic()
    with lock:
        state["done"] += 1
        if measure_from <= now <= measure_until:
            state["completed"] += 1
            sent = sent_at.pop(order, None)
            if sent is not None:
                latencies.append((now - sent) * 1e3)


def starter(k: int) -> None:
    n = 0
    gap = args.starters / args.rate if args.rate > 0 else 0.0
    next_at = time.monotonic()
    while time.monotonic() < measure_until:
        while state["started"] - state["done"] >= args.window and time.monotonic() < measure_until:
            time.sleep(0.001)
        if gap:
            next_at += gap
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        order = f"o-{args.process}-{k}-{n}"
        n += 1
        try:
            with SetWorkflowID(order):
                DBOS.start_workflow(order_workflow, order)
        except Exception as e:  # counted, the run goes on
            print(f"start {order}: {e}", file=sys.stderr)
            with lock:
                state["failed"] += 1
            continue
        with lock:
            state["started"] += 1


def sender() -> None:
    while time.monotonic() < measure_until + 1:
        try:
            orders = [waiting.get(timeout=0.05)]
        except queue.Empty:
            continue
        while True:
            try:
                orders.append(waiting.get_nowait())
            except queue.Empty:
                break
        now = time.monotonic()
        with lock:
            for o in orders:
                sent_at[o] = now
        DBOS.send_bulk([SendMessage(destination_id=o, message={"approved": True}) for o in orders])


DBOS.launch()
threads = [threading.Thread(target=starter, args=(k,), daemon=True) for k in range(args.starters)]
threads.append(threading.Thread(target=sender, daemon=True))
for t in threads:
    t.start()
while time.monotonic() < measure_until:
    time.sleep(0.1)
with lock:
    out = {
        "process": args.process,
        "completed": state["completed"],
        "seconds": args.duration,
        "started": state["started"],
        "failed": state["failed"],
        "latencies_ms": latencies,
    }
print(json.dumps(out), flush=True)
os._exit(0)
