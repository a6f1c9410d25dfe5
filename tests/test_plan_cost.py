"""gptjax/plan_cost.py: what a compiled step moves per chip, read from HLO text, checked by hand on a small module
written in the TPU compiler's own syntax (a scanned loop of 12 iterations, collectives in the loop and out of it,
a multi-line custom call, an all-gather spread over the loop as async collective fusion pieces, a reduce-scatter
written as an all-reduce fused with its slice)."""

import pytest

from gptjax import plan_cost

HLO = """HloModule jit__train_step, entry_computation_layout={(f32[64,32]{1,0})->f32[64,32]{1,0}}

%fused_gather (param_0.1: bf16[1,16,32]) -> bf16[1,64,32] {
  %param_0.1 = bf16[1,16,32]{2,1,0:T(8,128)(2,1)} parameter(0)
  ROOT %all-gather.1 = bf16[1,64,32]{2,1,0:T(8,128)(2,1)} all-gather(%param_0.1), channel_id=7, replica_groups=mesh['axis_0'=1,'axis_1'=4] {'axis_1'}, dimensions={1}, use_global_device_ids=true
}

%async_collective_fusion.1 (param_0.2: bf16[100,8], param_1.2: f32[4,32]) -> (f32[4,32], bf16[100,32]) {
  %param_0.2 = bf16[100,8]{1,0} parameter(0)
  %param_1.2 = f32[4,32]{1,0} parameter(1)
  %all-gather.2 = bf16[100,32]{1,0} all-gather(%param_0.2), channel_id=9, replica_groups=[1,4]<=[4], dimensions={1}
  ROOT %tuple.1 = (f32[4,32]{1,0}, bf16[100,32]{1,0}) tuple(%param_1.2, %all-gather.2)
}

%async_collective_fusion.2 (param_0.3: bf16[100,8], param_1.3: f32[4,32]) -> (f32[4,32], bf16[100,32]) {
  %param_0.3 = bf16[100,8]{1,0} parameter(0)
  %param_1.3 = f32[4,32]{1,0} parameter(1)
  %all-gather.3 = bf16[100,32]{1,0} all-gather(%param_0.3), channel_id=9, replica_groups=[1,4]<=[4], dimensions={1}
  ROOT %tuple.2 = (f32[4,32]{1,0}, bf16[100,32]{1,0}) tuple(%param_1.3, %all-gather.3)
}

%body (p: (s32[], bf16[12,16,32], f32[4,32], bf16[100,8])) -> (s32[], bf16[12,16,32], f32[4,32], bf16[100,8]) {
  %p = (s32[]{:T(128)}, bf16[12,16,32]{2,1,0}, f32[4,32]{1,0}, bf16[100,8]{1,0}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %w = bf16[12,16,32]{2,1,0} get-tuple-element(%p), index=1
  %x = f32[4,32]{1,0} get-tuple-element(%p), index=2
  %emb = bf16[100,8]{1,0} get-tuple-element(%p), index=3
  %slice = bf16[1,16,32]{2,1,0} fusion(%w, %i), kind=kLoop, calls=%fused_slice
  %gathered = bf16[1,64,32]{2,1,0} fusion(%slice), kind=kLoop, calls=%fused_gather
  %piece.1 = (f32[4,32]{1,0}, bf16[100,32]{1,0}) fusion(%emb, %x), kind=kOutput, calls=%async_collective_fusion.1, backend_config={"continuation_config":{"operand_original_start":"0"}}
  %piece.2 = (f32[4,32]{1,0}, bf16[100,32]{1,0}) fusion(%emb, %x), kind=kOutput, calls=%async_collective_fusion.2, backend_config={"continuation_config":{"operand_original_start":"0"}}
  %attn = f32[4,32]{1,0} custom-call(%x), custom_call_target="tpu_custom_call", backend_config={"kernel":"splash",
"xprof_metadata":"{\\"block_q\\": 512
}}"}
  %sum = f32[4,32]{1,0} all-reduce(%attn), channel_id=3, replica_groups={{0,1},{2,3}}, to_apply=%add
  ROOT %t = (s32[]{:T(128)}, bf16[12,16,32]{2,1,0}, f32[4,32]{1,0}, bf16[100,8]{1,0}) tuple(%i, %w, %sum, %emb)
}

%fused_slice (param_0.4: bf16[12,16,32], param_1.4: s32[]) -> bf16[1,16,32] {
  %param_0.4 = bf16[12,16,32]{2,1,0} parameter(0)
  %param_1.4 = s32[] parameter(1)
  ROOT %ds = bf16[1,16,32]{2,1,0} dynamic-slice(%param_0.4, %param_1.4, %param_1.4, %param_1.4), dynamic_slice_sizes={1,16,32}
}

%all-reduce-scatter.1 (param_0.9: f32[64,32]) -> f32[16,32] {
  %param_0.9 = f32[64,32]{1,0} parameter(0)
  %ar = f32[64,32]{1,0} all-reduce(%param_0.9), channel_id=8, replica_groups=[1,4]<=[4], to_apply=%add
  %zero.2 = s32[] constant(0)
  ROOT %ds.2 = f32[16,32]{1,0} dynamic-slice(%ar, %zero.2, %zero.2), dynamic_slice_sizes={16,32}
}

%cond (p.1: (s32[], bf16[12,16,32], f32[4,32], bf16[100,8])) -> pred[] {
  %p.1 = (s32[]{:T(128)}, bf16[12,16,32]{2,1,0}, f32[4,32]{1,0}, bf16[100,8]{1,0}) parameter(0)
  %c = s32[]{:T(128)} constant(12)
  %n = s32[]{:T(128)} get-tuple-element(%p.1), index=0
  ROOT %lt = pred[]{:T(512)} compare(%n, %c), direction=LT
}

ENTRY %main.1_spmd (a: f32[64,32], w: bf16[12,16,32], e: bf16[100,8]) -> f32[64,32] {
  %a = f32[64,32]{1,0} parameter(0)
  %w.1 = bf16[12,16,32]{2,1,0} parameter(1)
  %e.1 = bf16[100,8]{1,0} parameter(2)
  %zero = s32[]{:T(128)} constant(0)
  %x0 = f32[4,32]{1,0} slice(%a), slice={[0:4], [0:32]}
  %init = (s32[]{:T(128)}, bf16[12,16,32]{2,1,0}, f32[4,32]{1,0}, bf16[100,8]{1,0}) tuple(%zero, %w.1, %x0, %e.1)
  %loop = (s32[]{:T(128)}, bf16[12,16,32]{2,1,0}, f32[4,32]{1,0}, bf16[100,8]{1,0}) while(%init), condition=%cond, body=%body
  %rs = f32[16,32]{1,0} reduce-scatter(%a), channel_id=5, replica_groups=[1,4]<=[4], dimensions={0}, to_apply=%add
  %ars = f32[16,32]{1,0} fusion(%a), kind=kOutput, calls=%all-reduce-scatter.1
  ROOT %out = f32[64,32]{1,0} all-gather(%rs), channel_id=6, replica_groups={}, dimensions={0}
}
"""


def test_parse_keeps_multiline_instructions_and_every_computation():
    comps, entry = plan_cost.parse(HLO)
    assert entry == "main.1_spmd"
    assert set(comps) == {"fused_gather", "async_collective_fusion.1", "async_collective_fusion.2", "body",
                          "fused_slice", "all-reduce-scatter.1", "cond", "main.1_spmd"}
    body = [i.name for i in comps["body"]]
    assert body[-3:] == ["attn", "sum", "t"]  # the custom call's lines after the first did not end the body


def test_a_loop_body_runs_its_trip_count_and_what_it_calls_with_it():
    comps, entry = plan_cost.parse(HLO)
    times = plan_cost.multiplicities(comps, entry)
    assert plan_cost.trip_count(comps["cond"]) == 12
    assert times["main.1_spmd"] == 1 and times["body"] == 12
    assert times["fused_gather"] == 12 and times["fused_slice"] == 12 and times["async_collective_fusion.1"] == 12


def test_group_sizes_in_each_replica_group_syntax():
    assert plan_cost.group_size("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dims", 8) == 4
    assert plan_cost.group_size("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0','axis_1'}", 8) == 8
    assert plan_cost.group_size("replica_groups=[2,4]<=[8], dimensions={0}", 8) == 4
    assert plan_cost.group_size("replica_groups={{0,1},{2,3}}, to_apply", 4) == 2
    assert plan_cost.group_size("replica_groups={}, dimensions={0}", 16) == 16


def test_bytes_per_chip_by_hand():
    moved = plan_cost.traffic(HLO, num_devices=4)["collective_bytes"]
    # in the loop, 12 times: a layer's bf16 [1,64,32] weights gathered over 4 chips (3/4 of 4096 bytes each time);
    # once: the carried [100,8] table gathered to [100,32] in two pieces of one channel (3/4 of 6400 bytes); after
    # the loop, the [64,32] f32 buffer gathered over all 4 chips from [16,32] (3/4 of 8192)
    assert moved["all-gather"] == 12 * 4096 * 3 / 4 + 6400 * 3 / 4 + 8192 * 3 / 4
    assert moved["all-reduce"] == 12 * 2 * 512 * 1 / 2  # f32[4,32] over pairs, each iteration
    # a [16,32] f32 result is 1/4 of what 4 chips reduce; so is the compiler's all-reduce fused with its slice
    assert moved["reduce-scatter"] == 2048 * 3 + 8192 / 4 * 3


def test_the_estimate_is_a_range_with_its_bound_named():
    bw = plan_cost.Bandwidth(hbm=1e12, ici=1e11, dcn=None)
    est = plan_cost.estimate(2e14, 1e15, {"collective_bytes": {"all-gather": 3e10}, "hbm_bytes": 1e11}, bw)
    assert est["terms_seconds"] == pytest.approx({"compute": 0.2, "collectives": 0.3, "HBM": 0.1})
    assert est["bound"] == "collectives"
    assert (est["low_seconds"], est["high_seconds"]) == pytest.approx((0.3, 0.6))
    alone = plan_cost.estimate(2e14, 1e15, {"collective_bytes": None, "hbm_bytes": None}, None)
    assert alone["bound"] == "compute" and alone["low_seconds"] == alone["high_seconds"] == pytest.approx(0.2)
