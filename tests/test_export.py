"""tools/export_onnx.py: each family's graph, run in onnxruntime with other batch sizes than the export's,
gives eager PyTorch's logits (max abs diff <= 1e-4 in float32); a reference AMixer checkpoint gives the
reference implementation's own logits (tests/data/golden)."""
import os

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from config import get_default_config, merge_yaml
from models import build_model
from tests.helpers import ROOT
from tools.export_onnx import main as export_onnx

SMALL = {  # patch grids of 8 in shifted windows of 4, then one window of 4; ACmix takes both of its paths
    'swin': 'SWIN: {PATCH_SIZE: 4, EMBED_DIM: 16, DEPTHS: [2, 2], NUM_HEADS: [2, 4], WINDOW_SIZE: 4}',
    'acmix_swin': 'SWIN: {PATCH_SIZE: 4, EMBED_DIM: 16, DEPTHS: [2, 2], NUM_HEADS: [2, 4], WINDOW_SIZE: 4}',
    'amixer_swin': 'SWIN: {PATCH_SIZE: 4, EMBED_DIM: 16, DEPTHS: [2, 2], NUM_HEADS: [2, 4], '
                   'STAGE_WINDOW_SIZES: [4, 4]}, AMIXER: {POLICY_APE: True, INIT_VALUES: 0.5}',
}


def run_onnx(path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(['logits'], {'images': images.numpy()})[0]


def assert_batch_is_dynamic(path):
    graph = onnx.load(str(path)).graph
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField('dim_value')
    assert not os.path.exists(f'{path}.data')  # the weights are inside the one file


@pytest.mark.parametrize('family, checkpoint', [('swin', False), ('acmix_swin', True), ('amixer_swin', True)])
def test_exported_graph_gives_eager_logits(family, checkpoint, tmp_path):
    cfg = tmp_path / 'model.yaml'
    cfg.write_text(f'DATA: {{IMG_SIZE: 32}}\nMODEL: {{TYPE: {family}, NUM_CLASSES: 10, {SMALL[family]}}}\n')
    config = get_default_config()
    merge_yaml(config, str(cfg))
    torch.manual_seed(config.SEED)  # the weights the tool initialises without a checkpoint
    model = build_model(config).eval()
    args = ['--cfg', str(cfg), '--out', str(tmp_path / 'model.onnx')]
    if checkpoint:  # every parameter perturbed, so that each one changes the logits
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape))
        torch.save({'model': model.state_dict()}, tmp_path / 'weights.pth')
        args += ['--checkpoint', str(tmp_path / 'weights.pth')]
    assert export_onnx(args) == 0
    assert_batch_is_dynamic(tmp_path / 'model.onnx')
    for batch in (1, 3):
        images = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(images).numpy()
        assert np.abs(run_onnx(tmp_path / 'model.onnx', images) - expected).max() <= 1e-4


def test_exported_reference_amixer_deit_checkpoint_gives_the_reference_logits(tmp_path):
    golden = torch.load(os.path.join(ROOT, 'tests', 'data', 'golden', 'amixer_deit_small_geometry.pt'),
                        weights_only=True)
    kwargs = golden['reference_kwargs']
    torch.save({'model': golden['state_dict']}, tmp_path / 'reference.pth')
    (tmp_path / 'model.yaml').write_text(f'''
DATA: {{IMG_SIZE: {kwargs["img_size"]}}}
MODEL:
  TYPE: amixer_deit
  NUM_CLASSES: 0  # the checkpoint's
  DEIT: {{PATCH_SIZE: {kwargs["patch_size"]}, EMBED_DIM: {kwargs["embed_dim"]}, DEPTH: {kwargs["depth"]},
         NUM_HEADS: {kwargs["num_heads"]}, MLP_RATIO: {float(kwargs["mlp_ratio"])}, NUM_BANKS: {kwargs["k"]}}}
''')
    assert export_onnx(['--cfg', str(tmp_path / 'model.yaml'), '--checkpoint', str(tmp_path / 'reference.pth'),
                        '--out', str(tmp_path / 'deit.onnx')]) == 0
    assert_batch_is_dynamic(tmp_path / 'deit.onnx')
    images, expected = golden['input'].float(), golden['output'].float().numpy()
    assert np.abs(run_onnx(tmp_path / 'deit.onnx', images) - expected).max() <= 1e-4
    # another batch size: the first image alone
    assert np.abs(run_onnx(tmp_path / 'deit.onnx', images[:1]) - expected[:1]).max() <= 1e-4


def test_export_of_a_checkpoint_of_another_model_is_an_error(tmp_path, capsys):
    torch.save({'model': {'head.weight': torch.zeros(10, 4)}}, tmp_path / 'other.pth')
    cfg = os.path.join(ROOT, 'configs', 'demo', 'acmix_swin_demo.yaml')
    assert export_onnx(['--cfg', cfg, '--checkpoint', str(tmp_path / 'other.pth'),
                        '--out', str(tmp_path / 'x.onnx')]) == 2
    assert 'other.pth does not match this model' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'x.onnx')
