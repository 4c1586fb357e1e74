#!/bin/bash
# interleaved: base vs seam, workload (a) with pgmq in each run; then the ports curve
export MBX_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
O=${OUT:-.}
for i in 1 2 3 4 5; do
  for b in base seam; do
    echo "== a $b $i $(date +%T)"
    ${BINS:?directory holding base/ and seam/ builds}/$b/mbx bench --workload unordered --peers pgmq --scaling '' --backlog 0 --no-half-load --duration 10s --warmup 3s --json > $O/a-$b-$i.json 2> $O/a-$b-$i.err; echo rc=$?
  done
done
for n in 1 100 1000; do
  for b in base seam; do
    echo "== ports $n $b $(date +%T)"
    ${BINS:?directory holding base/ and seam/ builds}/$b/mbx bench --workload unordered --ports $n --peers '' --scaling '' --backlog 0 --no-tracking-all --duration 10s --warmup 3s --json > $O/ports-$n-$b.json 2> $O/ports-$n-$b.err; echo rc=$?
  done
done
echo "== all done $(date +%T)"
