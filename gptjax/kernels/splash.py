"""Splash (sparse flash) attention, the Pallas TPU kernel that ships with jax, for causal self-attention with
optional segment ids (packed examples).

The kernel works on one example (heads, length, head_dim) and does not scale q, so q is scaled here and the kernel
is vmapped over the batch. Under a mesh it runs inside `jax.shard_map`: batch rows over the data axes, heads over
`tensor` (a Pallas call cannot be partitioned automatically). On a CPU it runs in Pallas' interpreter, which is
how the tests hold it equal to the reference.
"""

import math

import jax
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from gptjax import sharding

BLOCK = 512  # the kernel's tile along the sequence; lengths must be a multiple of min(BLOCK, length)


def supports(T: int, S: int) -> bool:
    return T == S and T % min(BLOCK, T) == 0 and T % 128 == 0


def _kernel(T: int, H: int, interpret: bool):
    b = min(BLOCK, T)
    sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                              block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    mask = splash.MultiHeadMask([splash.CausalMask((T, T)) for _ in range(H)])
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, segment_ids_BxT=None, interpret: bool = False):
    """`interpret`: run the kernel in Pallas' interpreter (off TPU; the tests hold it to the reference on CPU)."""
    heads = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
    q_BxHxTxK = heads(q_BxTxHxK * (1 / math.sqrt(q_BxTxHxK.shape[-1])))
    k_BxHxSxK, v_BxHxSxK = heads(k_BxSxHxK), heads(v_BxSxHxK)

    def local(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, segment_ids_BxT):
        kernel = _kernel(q_BxHxTxK.shape[2], q_BxHxTxK.shape[1], interpret)
        if segment_ids_BxT is None:
            return jax.vmap(kernel)(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK)
        ids = jax.vmap(lambda s: splash.SegmentIds(q=s, kv=s))(segment_ids_BxT)
        return jax.vmap(lambda q, k, v, i: kernel(q, k, v, segment_ids=i))(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, ids)

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and set(sharding.MESH_AXES) <= set(mesh.axis_names):
        head_axis = "tensor" if q_BxHxTxK.shape[1] % mesh.shape["tensor"] == 0 else None
        # Rows over the data axes when they divide (not the one-row example batch that initialises the model).
        rows = sharding.BATCH_AXES if q_BxHxTxK.shape[0] % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0 else None
        qkv = P(rows, head_axis, None, None)
        seg = None if segment_ids_BxT is None else P(rows, None)
        local = jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, seg), out_specs=qkv, check_vma=False)
    return heads(local(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, segment_ids_BxT))
