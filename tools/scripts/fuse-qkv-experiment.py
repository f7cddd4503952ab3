"""The fused-QKV experiment of docs/engines.md ("Graph-shape levers"), kept to reproduce it; not part of any
export, because it was measured slower in tract.

Fuses each three MatMuls that read the same tensor with equal 2-D constant weights (a layer's q/k/v
projections), each followed by an Add of a constant bias, into one MatMul [d, 3d] + one Add + Split, and folds
a following Mul by a scalar constant (the q scale) into the weights.

    python tools/scripts/fuse-qkv-experiment.py vision.fp32.onnx vision.fused.onnx
"""
import sys, collections
import numpy as np, onnx
from onnx import helper, numpy_helper

src, dst = sys.argv[1], sys.argv[2]
m = onnx.load(src)
g = m.graph
inits = {i.name: i for i in g.initializer}
consumers = collections.defaultdict(list)
for n in g.node:
    for i in n.input:
        consumers[i].append(n)
producer = {o: n for n in g.node for o in n.output}
const_val = {}
for n in g.node:
    if n.op_type == 'Constant':
        const_val[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    if n.op_type == 'Identity' and n.input[0] in inits:
        const_val[n.output[0]] = numpy_helper.to_array(inits[n.input[0]])
for k, v in inits.items():
    const_val[k] = numpy_helper.to_array(v)

def weight(name):
    return const_val.get(name)

groups = collections.defaultdict(list)
for n in g.node:
    if n.op_type == 'MatMul' and weight(n.input[1]) is not None and weight(n.input[1]).ndim == 2:
        groups[n.input[0]].append(n)
remove, add_nodes, new_inits = set(), [], []
fused = 0
for a, mms in groups.items():
    if len(mms) != 3:
        continue
    shapes = {weight(x.input[1]).shape for x in mms}
    if len(shapes) != 1:
        continue
    # each MatMul followed by exactly one Add with a constant bias
    adds = []
    for mm in mms:
        c = consumers[mm.output[0]]
        if len(c) != 1 or c[0].op_type != 'Add':
            break
        bias_in = [i for i in c[0].input if i != mm.output[0]][0]
        if weight(bias_in) is None:
            break
        adds.append((c[0], weight(bias_in)))
    else:
        ws, bs, outs = [], [], []
        for mm, (ad, b) in zip(mms, adds):
            w = weight(mm.input[1]).astype(np.float32)
            b = b.astype(np.float32)
            out = ad.output[0]
            # fold a following Mul by a scalar constant (the q scale)
            c = consumers[out]
            if len(c) == 1 and c[0].op_type == 'Mul':
                s_in = [i for i in c[0].input if i != out][0]
                s = weight(s_in)
                if s is not None and s.size == 1:
                    w = w * s.reshape(()); b = b * s.reshape(())
                    remove.add(id(c[0])); out = c[0].output[0]
            ws.append(w); bs.append(b); outs.append(out)
            remove.add(id(mm)); remove.add(id(ad))
        k = f'fused_qkv_{fused}'
        new_inits += [numpy_helper.from_array(np.concatenate(ws, 1), k + '_w'),
                      numpy_helper.from_array(np.concatenate(bs, -1), k + '_b'),
                      numpy_helper.from_array(np.array([w.shape[1] for w in ws], np.int64), k + '_split')]
        add_nodes.append((mms[0], [
            helper.make_node('MatMul', [a, k + '_w'], [k + '_mm'], name=k + '_mm'),
            helper.make_node('Add', [k + '_mm', k + '_b'], [k + '_add'], name=k + '_add'),
            helper.make_node('Split', [k + '_add', k + '_split'], outs, axis=-1, name=k + '_split')]))
        fused += 1
nodes = []
firsts = {id(f): new for f, new in add_nodes}
for n in g.node:
    if id(n) in firsts:
        nodes += firsts[id(n)]
    if id(n) not in remove:
        nodes.append(n)
del g.node[:]
g.node.extend(nodes)
g.initializer.extend(new_inits)
onnx.checker.check_model(m)
onnx.save(m, dst)
print(f'fused {fused} q/k/v groups; nodes {len(nodes)}')
