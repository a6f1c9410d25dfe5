"""What a compiled train step moves per chip, and the step time that implies: the plan's estimate.

Read from the optimized HLO of the compiled program (`compiled.as_text()`), each computation weighted by how often
it runs (a `while` body by its trip count, read from its condition's bound: libtpu's `cost_analysis()` counts a
scanned layer stack once, and its `optimal_seconds` reads negative for an ahead-of-time compile, so neither is
used):
- **collectives**: the bytes each chip sends over the inter-chip interconnect for every all-gather,
  reduce-scatter, all-reduce, all-to-all and collective-permute, as a ring moves them ((n-1)/n of the gathered or
  scattered buffer, twice that for an all-reduce, over a group of n chips);
- **HBM**: the bytes every top-level instruction reads and writes (its operands and its result; what happens
  inside a fusion stays on chip), XLA's own "bytes accessed" approximation.
Against the chip's stated peak FLOP/s, HBM bandwidth and interconnect bandwidth (`BANDWIDTHS`, vendor figures),
each is a time; the step takes at least the longest (everything overlapped) and at most their sum (nothing
overlapped). Hand-written because no library reads a TPU program's traffic (XLA's cost model is internal).
"""

import dataclasses
import math
import re

# Per chip, bytes/s. HBM: the Cloud TPU system architecture pages (v4 1200 GB/s, v5e 819 GB/s, v5p 2765 GB/s,
# v6e 1638 GB/s). Interconnect: the pages' "all-reduce bandwidth per Pod" over the pod's chips (v4 1.1 PB/s / 4096,
# v5e 51.2 TB/s / 256, v6e 102.4 TB/s / 256), which is half the stated bidirectional ICI bandwidth per chip where
# both are given (v5e 400 GB/s, v6e 800 GB/s); v5p from that rule (1200 GB/s bidirectional). Data-centre network
# per chip: v5p 50 Gbps (stated), v5e 2 x 100 Gbps per 8-chip host; none stated for v4 and v6e.
@dataclasses.dataclass(frozen=True)
class Bandwidth:
    hbm: float
    ici: float
    dcn: float | None


BANDWIDTHS = {
    "TPU v4": Bandwidth(1200e9, 1.1e15 / 4096, None),
    "TPU v5 lite": Bandwidth(819e9, 51.2e12 / 256, 200e9 / 8 / 8),
    "TPU v5": Bandwidth(2765e9, 1200e9 / 2, 50e9 / 8),
    "TPU v6 lite": Bandwidth(1638e9, 102.4e12 / 256, None),
}

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([\d,]*)\]")
_ARRAY_TEXT = re.compile(r"\b(?:pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[[\d,]*\](?:\{[^}]*\})?")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([\d,]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition|branch_computations)=\{?(%[\w.\-]+(?:,\s*%[\w.\-]+)*)\}?")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
# No HBM traffic of their own: names, views, control flow (their bodies are counted), and the -done halves of async
# pairs (the -start carries the transfer).
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "conditional", "call",
               "after-all", "partition-id", "replica-id", "iota", "opt-barrier", "copy-done", "slice-done", "all-gather-done",
               "all-reduce-done", "collective-permute-done", "async-done", "async-update"}


def shape_bytes(type_text: str, hbm_only: bool = False) -> int:
    """Bytes of an HLO type: one array (`bf16[3,2048]{...}`) or a tuple of them. With `hbm_only`, arrays the TPU
    compiler placed in on-chip memory (layout `S(1)`) count nothing."""
    total = 0
    for dtype, dims, layout in _ARRAY.findall(type_text):
        if hbm_only and "S(1)" in layout:
            continue
        total += _BYTES.get(dtype, 1) * math.prod(int(d) for d in dims.split(",") if d)
    return total


@dataclasses.dataclass
class Instr:
    name: str
    type_text: str
    op: str
    rest: str  # operands and attributes


def parse(hlo: str) -> tuple[dict[str, list[Instr]], str]:
    """The computations of an HLO module (name -> instructions) and the entry computation's name. An instruction
    may run over several lines (a custom call's backend config holds newlines); a computation ends at a line that
    is `}` alone."""
    comps, entry, current = {}, "", None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = comps.setdefault(header.group(1), [])
            if line.startswith("ENTRY"):
                entry = header.group(1)
            continue
        if line.strip() == "}":
            current = None
            continue
        if current is None:
            continue
        m = _INSTR.match(line)
        if m:
            current.append(Instr(m.group(1), m.group(2), m.group(3), m.group(4)))
        elif current:  # the rest of the instruction above
            current[-1].rest += "\n" + line
    return comps, entry


def trip_count(condition: list[Instr]) -> int:
    """A scan's loop bound: the integer constant its condition compares the counter against (1 if none is)."""
    consts = [int(c) for i in condition if i.op == "constant" for c in re.findall(r"^(-?\d+)\)", i.rest)]
    return max(consts, default=1) or 1


def multiplicities(comps: dict[str, list[Instr]], entry: str) -> dict[str, int]:
    """How many times each computation runs in one execution of the entry computation."""
    counts: dict[str, int] = {}

    def visit(name: str, times: int) -> None:
        counts[name] = counts.get(name, 0) + times
        for ins in comps.get(name, []):
            called = {kind: [c.strip().lstrip("%") for c in names.split(",")]
                      for kind, names in _CALLS.findall(ins.rest)}
            if ins.op == "while":
                n = trip_count(comps.get(called.get("condition", [""])[0], []))
                for body in called.get("body", []):
                    visit(body, times * n)
                continue
            for kind, names in called.items():
                if kind in ("calls", "branch_computations"):  # fusions, calls, async wrappers; a branch at most once
                    for c in names:
                        visit(c, times)

    visit(entry, 1)
    return counts


def group_size(rest: str, num_devices: int) -> int:
    """The number of chips in each replica group of a collective."""
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)
    if m:  # mesh['axis_0'=4,'axis_1'=2] {'axis_1'}: the groups span the named axes
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", m.group(2)))
    m = re.search(r"replica_groups=\[[\d,]*?(\d+)\]<=", rest)
    if m:  # iota form [groups,size]<=[n]
        return int(m.group(1))
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", rest)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"source_target_pairs=", rest)
    return 2 if m else num_devices


def collective_bytes(kind: str, result_bytes: int, n: int) -> float:
    """Bytes one chip sends for one collective whose result is `result_bytes` on a group of `n` chips (ring)."""
    if n <= 1:
        return 0.0
    if kind == "all-gather" or kind == "all-to-all":
        return result_bytes * (n - 1) / n
    if kind == "reduce-scatter":  # the result is 1/n of what is reduced
        return result_bytes * (n - 1)
    if kind == "all-reduce":
        return 2 * result_bytes * (n - 1) / n
    return float(result_bytes)  # collective-permute: the buffer goes to one neighbour


def _async_result(ins: Instr) -> int:
    """An async -start's result is a tuple (operands..., result...); the transfer is its larger half."""
    shapes = [shape_bytes(f"{d}[{s}]") for d, s in _SHAPE.findall(ins.type_text)]
    return max(shapes, default=0)


def _operands(ins: Instr) -> list[str]:
    return re.findall(r"%([\w.\-]+)", ins.rest.split("),", 1)[0])


def _sliced_reads(fused: list[Instr]) -> dict[int, str]:
    """Parameter index -> the type of what is read of it, for the parameters of a fused computation that are used
    only through dynamic-slice or slice (the fusion reads those slices, not the whole buffer)."""
    params = {i.name: int(re.match(r"(\d+)", i.rest).group(1)) for i in fused if i.op == "parameter"}
    uses: dict[str, list[Instr]] = {}
    for ins in fused:
        for o in _operands(ins):
            uses.setdefault(o, []).append(ins)
    out = {}
    for name, index in params.items():
        users = uses.get(name, [])
        if users and all(u.op in ("dynamic-slice", "slice") and _operands(u)[0] == name for u in users):
            out[index] = ",".join(u.type_text for u in users)
    return out


def _hbm_bytes(ins: Instr, result: int, operands: list[int]) -> int:
    """HBM bytes of one top-level instruction: its operands and result, except that an in-place update of a slice
    (a scan writing one layer's output into the stack) moves only the slice, and reading a slice (one layer's
    weights out of the stack) only what is read."""
    if "dynamic-update-slice" in ins.name and operands:
        return 2 * (sum(operands) - max(operands))
    if ins.op == "slice-start":  # its result is ((operand), slice, ...): it reads and writes the slice
        return 2 * min((shape_bytes(f"{d}[{x}]") for d, x in _SHAPE.findall(ins.type_text)), default=0)
    if ("dynamic-slice" in ins.name or ins.op in ("dynamic-slice", "slice")) and operands:
        return 2 * result
    return result + sum(operands)


def _dims(type_text: str) -> set[str]:
    """The arrays of an HLO type without their layouts: {'bf16[50257,192]', ...}."""
    return {f"{d}[{s}]" for d, s in _SHAPE.findall(type_text)}


def traffic(hlo: str, num_devices: int) -> dict:
    """Per chip per step: collective bytes by kind, HBM bytes, and how many collectives ran.

    A collective in a loop body runs once per iteration, with one exception the TPU compiler makes: a transfer of a
    whole loop-carried buffer (the all-gather of the tied embedding for the head after the layer loop) is split
    into pieces fused into the loop's compute ("async collective fusion" with a `continuation_config`, the pieces
    sharing a channel id), and the buffer moves once per entry into the loop. A piece whose operand has the shape
    of a loop-carried buffer counts so: once per channel per loop entry. (A layer's own weights are a slice of the
    stacked ones, shaped [1, ...], and move every iteration.)"""
    comps, entry = parse(hlo)
    times = multiplicities(comps, entry)
    fused = {c for ins_list in comps.values() for ins in ins_list if ins.op == "fusion"
             for c in re.findall(r"calls=%([\w.\-]+)", ins.rest)}
    spread = {}  # a fused computation holding a piece of a spread transfer -> (loop entries, carried shapes)
    for name, instrs in comps.items():
        for ins in instrs:
            if ins.op != "while":
                continue
            body = re.search(r"body=%([\w.\-]+)", ins.rest).group(1)
            carried = set().union(*(_dims(i.type_text) for i in comps.get(body, []) if i.op == "parameter"))
            for piece in comps.get(body, []):
                called = re.search(r"calls=%([\w.\-]+)", piece.rest)
                if piece.op == "fusion" and called and "continuation_config" in piece.rest:
                    spread[called.group(1)] = (times.get(name, 0), carried)
    transferred = set().union(set(), *(carried for _, carried in spread.values()))
    by_kind = {k: 0.0 for k in COLLECTIVES}
    count, hbm, seen = 0, 0.0, set()
    for name, instrs in comps.items():
        n_runs = times.get(name, 0)
        if not n_runs:
            continue
        types = {i.name: i.type_text for i in instrs}
        for ins in instrs:
            base = ins.op[:-len("-start")] if ins.op.endswith("-start") else ins.op
            if base == "all-reduce" and name.startswith("all-reduce-scatter"):
                base = "reduce-scatter"  # the TPU compiler's reduce-scatter: an all-reduce fused with its slice
            if base in COLLECTIVES:
                size = _async_result(ins) if ins.op.endswith("-start") else shape_bytes(ins.type_text)
                runs = n_runs
                source = _dims(types.get((_operands(ins) or [""])[0], ""))
                if name in spread and source and source <= spread[name][1]:
                    channel = re.search(r"channel_id=(\d+)", ins.rest)
                    key = channel.group(1) if channel else (name, ins.name)
                    runs = 0 if key in seen else spread[name][0]
                    seen.add(key)
                n = group_size(ins.rest, num_devices)
                if base == "reduce-scatter" and ins.op == "all-reduce":  # its result is the whole reduced buffer
                    size //= n
                by_kind[base] += runs * collective_bytes(base, size, n)
                count += runs
            if name in fused or ins.op in _NO_TRAFFIC:
                continue
            operands = [types.get(o, "") for o in _operands(ins)]
            called = re.search(r"calls=%([\w.\-]+)", ins.rest) if ins.op == "fusion" else None
            if called:  # an operand the fusion only slices is read a slice at a time (one layer of a stack)
                sliced = _sliced_reads(comps.get(called.group(1), []))
                operands = [sliced.get(i, t) for i, t in enumerate(operands)]
            result = ins.type_text
            if "continuation_config" in ins.rest:  # the buffers it passes through in place are the transfer's
                result = ",".join(a for a in _ARRAY_TEXT.findall(result) if _dims(a) & transferred != _dims(a))
                operands = [t for t in operands if not _dims(t) or not _dims(t) <= transferred]
            hbm += n_runs * _hbm_bytes(ins, shape_bytes(result, hbm_only=True),
                                       [shape_bytes(t, hbm_only=True) for t in operands])
    return {"collective_bytes": by_kind, "collectives": count, "hbm_bytes": hbm}


def estimate(flops_per_chip: float, peak: float, moved: dict, bandwidth: Bandwidth | None) -> dict:
    """The step time's terms (seconds) and its range: at least the longest term, at most their sum."""
    terms = {"compute": flops_per_chip / peak}
    if bandwidth is not None:
        terms["collectives"] = sum(moved["collective_bytes"].values()) / bandwidth.ici
        terms["HBM"] = moved["hbm_bytes"] / bandwidth.hbm
    bound = max(terms, key=terms.get)
    return {"terms_seconds": terms, "low_seconds": terms[bound], "high_seconds": sum(terms.values()), "bound": bound}
