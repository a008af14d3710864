"""bench/profile_ops.py: HLO text parsing and the attribution of GPU kernels to HLO ops."""

from bench import profile_ops

# Cut from the optimised HLO of the init step on an H200 (2026-11-27), names and layouts kept.
HLO = """\
HloModule jit_step, entry_computation_layout={()}

%fused_convert.8 (param_0.1: bf16[4,131072,32], param_1.2: bf16[4,131072,32]) -> bf16[128,16,16,16,64] {
  %param_0.1 = bf16[4,131072,32]{2,1,0} parameter(0), metadata={scheduling_name="param_0.1"}
  %concatenate.38.5 = bf16[128,16,16,16,64]{4,3,2,1,0} concatenate(%param_0.1, %param_1.2), \
dimensions={4}, metadata={op_name="jit(step)/ContrastiveEncoder/backbone/mixed_3b/concatenate"}
  %reduce_window_max.367.3 = f32[128,16,16,16,64]{4,3,2,1,0} reduce-window(%concatenate.38.5), \
metadata={op_name="jit(step)/ContrastiveEncoder/backbone/mixed_3c/reduce_window_max"}
  ROOT %convert.1460.1 = bf16[128,16,16,16,64]{4,3,2,1,0} convert(%reduce_window_max.367.3), \
metadata={scheduling_name="convert.1460.1"}
}

%command_buffer.3 (p: bf16[4,131072,32]) -> bf16[128,16,16,16,64] {
  %p = bf16[4,131072,32]{2,1,0} parameter(0)
  ROOT %loop_convert_fusion.8 = bf16[128,16,16,16,64]{4,3,2,1,0} fusion(%p, %p), kind=kLoop, \
calls=%fused_convert.8, metadata={scheduling_name="loop_convert_fusion.8"}
}

ENTRY %main.1 (x: bf16[4096,128,128,3]) -> bf16[4096,64,64,64] {
  %x = bf16[4096,128,128,3]{3,2,1,0} parameter(0)
  %cudnn-conv.178 = (bf16[4096,64,64,64]{3,2,1,0}, u8[1073792016]{0}) custom-call(%x, %x), \
window={size=7x7 stride=2x2}, custom_call_target="__cudnn$convForward", \
metadata={op_name="jit(step)/jvp(ContrastiveEncoder)/backbone/stem/spatial/conv/conv_general_dilated"}
  %input_scatter_fusion.3 = bf16[128,18,18,18,256]{4,3,2,1,0} fusion(%x), kind=kInput, \
calls=%fused_scatter.3, metadata={op_name=\
"jit(step)/transpose(jvp(ContrastiveEncoder))/backbone/mixed_3c/select_and_scatter"}
  ROOT %command_buffer_3 = bf16[4096,64,64,64]{3,2,1,0} call(%x), to_apply=%command_buffer.3
}
"""


def test_hlo_ops_give_kinds_and_jax_names_also_from_a_fusions_body():
    ops = profile_ops.hlo_ops(HLO)
    assert ops["cudnn-conv.178"].kind == "custom-call:__cudnn$convForward"
    assert ops["cudnn-conv.178"].op_name.endswith("stem/spatial/conv/conv_general_dilated")
    assert ops["input_scatter_fusion.3"].kind == "fusion:kInput"
    # No op_name on the fusion itself, none on its body's ROOT: the last one named in its body.
    assert ops["loop_convert_fusion.8"].kind == "fusion:kLoop"
    assert ops["loop_convert_fusion.8"].op_name.endswith("mixed_3c/reduce_window_max")
    assert ops["concatenate.38.5"].kind == "concatenate"


def test_kernels_are_attributed_to_their_hlo_ops_also_inside_command_buffers():
    known = profile_ops.hlo_ops(HLO)
    attribute = profile_ops.kernel_op
    # A fusion's kernel inside a command buffer: found by its own name, not the buffer's.
    assert attribute("loop_convert_fusion_8", "command_buffer_3", known) == "loop_convert_fusion.8"
    # A library kernel launched for an op outside any command buffer: the op's name.
    assert attribute("sm90_xmma_fprop_implicit_gemm_bf16", "cudnn-conv.178", known) == "cudnn-conv.178"
    # A library kernel inside a command buffer: only its own name says what it is.
    assert attribute("nvjet_sm90_tst_128x128", "command_buffer_3", known) == (
        "command_buffer_3: nvjet_sm90_tst_128x128"
    )
    assert attribute("Memset 3", "cudnn-conv.178", known) == "memset"
    assert attribute("input_scatter_fusion", None, known) == "input_scatter_fusion"


def test_table_sums_time_by_kind_primitive_and_layer():
    ops = profile_ops.hlo_ops(HLO)
    times = {"input_scatter_fusion.3": 0.6, "cudnn-conv.178": 0.3, "loop_convert_fusion.8": 0.1}
    text = profile_ops.table(times, ops, "device kernels", top=5)
    lines = text.splitlines()
    assert lines[0] == "op time 1.0000 s from device kernels"
    assert lines[2].split()[:3] == ["60.0%", "0.6000", "input_scatter_fusion.3"]
    section = {line: i for i, line in enumerate(lines) if line.startswith("by ")}
    prim = lines[section["by primitive (JAX's name, last part):"] + 1 :][:3]
    assert [line.split(None, 2)[2] for line in prim] == [
        "select_and_scatter (backward)",
        "conv_general_dilated (forward)",
        "reduce_window_max (forward)",
    ]
    layers = lines[section["by layer:"] + 1 :]
    assert [line.split(None, 2) for line in layers] == [
        ["70.0%", "0.7000", "backbone/mixed_3c"],
        ["30.0%", "0.3000", "backbone/stem"],
    ]
