# Aggregates `perf script` stacks: for each sample, the innermost frame naming a burn-flex or
# vigil operation (the op that spent the time), and the leaf symbol class.
import sys, re, collections
pat = re.compile(r'(burn_flex::ops::[a-z_]+::[A-Za-z_0-9]+|burn_flex::[a-z_]+::[A-Za-z_0-9]+|vigil_core::[A-Za-z_0-9:]+|burn_autodiff::[A-Za-z_0-9:]+|rand[a-z_]*::[A-Za-z_0-9:]+|gemm_common::gemm::[a-z_]+)')
by_op = collections.Counter(); total = 0
stack = []
def flush():
    global total
    if not stack: return
    total += 1
    op = None
    for fr in stack:  # leaf first
        m = pat.search(fr)
        if m and 'closure' not in m.group(1):
            op = m.group(1); break
    by_op[op or ('?' + stack[0][:60])] += 1
for line in sys.stdin:
    line = line.rstrip('\n')
    if not line.strip():
        flush(); stack = []; continue
    if line.startswith((' ', '\t')):
        parts = line.strip().split(None, 1)
        if len(parts) == 2: stack.append(parts[1])
    else:
        stack = []
flush()
for op, n in by_op.most_common(45):
    print(f"{100*n/total:6.2f}%  {op}")
