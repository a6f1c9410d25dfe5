"""The device mesh (data, fsdp, tensor), logical-axis rules, and the shardings of state and batches."""

import math

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gptjax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(shape, num_devices: int) -> tuple[int, int, int]:
    """Fills the one -1 in `mesh.shape` and checks the product against the devices."""
    shape = tuple(int(s) for s in shape)
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ConfigError(f"mesh.shape: {shape} cannot cover {num_devices} devices")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ConfigError(f"mesh.shape: {shape} needs {math.prod(shape)} devices, this run has {num_devices}")
    return shape


def make_mesh(shape, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = resolve_mesh_shape(shape, len(devices))
    # Auto axis types: flax's logical constraints need them (jax.make_mesh defaults to Explicit).
    auto = (jax.sharding.AxisType.Auto,) * 3
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    except NotImplementedError:  # a TPU torus no product of whole physical axes fits (tensor 8 on v5p-128's 4x4x4)
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=auto)


def with_rule(rules, name: str, axes) -> tuple:
    """`rules` with logical axis `name` mapped to `axes` (a mesh axis, a tuple of them, or None)."""
    if name not in dict(rules):
        raise ValueError(f"no logical axis {name!r} in the rules")
    return tuple((k, axes if k == name else v) for k, v in hashable_rules(rules))


def hashable_rules(rules) -> tuple:
    """Logical-axis rules as nested tuples (a config read from JSON has lists), usable as a static jit argument."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Rows split over the data axes. With the default ndim=1 it also serves as a prefix for a whole batch dict,
    whatever the rank of each leaf (per-row scalars included)."""
    return NamedSharding(mesh, P(BATCH_AXES, *(None,) * (ndim - 1)))


def _fit(spec: P, shape, mesh: Mesh) -> P:
    """Drops mesh axes from dimensions they do not divide (a 65-token vocabulary over 4 tensor shards)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if names and dim % size == 0 else None)
    return P(*out)


def unbox_abstract(tree):
    """Strips flax's partitioning boxes without adding sharding constraints (for eval_shape outputs)."""
    return jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
    )


def logical_shardings(abstract_boxed_tree, mesh: Mesh, rules):
    """NamedShardings for a pytree whose leaves may be flax LogicallyPartitioned boxes (as from eval_shape)."""
    logical_specs = nn.get_partition_spec(abstract_boxed_tree)
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    shapes = unbox_abstract(abstract_boxed_tree)
    # optax's empty MaskedNode (the frozen part of a partitioned optimizer's state) passes through as it is: flax
    # reads it, a NamedTuple, as a partition spec.
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, _fit(spec, x.shape, mesh)) if hasattr(x, "shape") else x,
        mesh_specs,
        shapes,
        is_leaf=lambda s: isinstance(s, P),
    )


def abstract_state(init_fn, mesh: Mesh, rules):
    """(abstract tree, shardings) of what `init_fn()` returns, without allocating it: leaves are ShapeDtypeStructs
    that carry their NamedSharding, ready for orbax restores and jit out_shardings (nanodo, maxtext)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(hashable_rules(rules)):
        boxed = jax.eval_shape(init_fn)
        shardings = logical_shardings(boxed, mesh, hashable_rules(rules))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unbox_abstract(boxed),
                            shardings)
    return abstract, shardings


def host_local_to_global(local_batch, mesh: Mesh):
    """This process's rows of the batch (an array or a dict of arrays) -> global arrays sharded over (data, fsdp)."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x), local_batch)


def to_host(x):
    """A global array as a numpy array on every process (gathered from the other hosts when it spans them)."""
    import numpy as np
    from jax.experimental import multihost_utils

    return np.asarray(x) if x.is_fully_addressable else np.asarray(multihost_utils.process_allgather(x, tiled=True))
