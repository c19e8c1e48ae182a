"""RISE and VL2V-SD: losses on hand-computed values, trainable parts, teacher independence."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import RISE_SD_CLASSES as C
from helpers import RISE_SD_DIM as D
from helpers import rise_sd_context as ctx
from vl2v.errors import ConfigError
from vl2v.methods import Batch, create_algorithm
from vl2v.methods.rise import relative_distance
from vl2v.students import create_student


def batch(size=32, n=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [Batch(y=torch.randint(0, C, (n,), generator=g), x=torch.rand(n, 3, size, size, generator=g),
                  t_img=F.normalize(torch.randn(n, D, generator=g), dim=-1))]


def test_relative_distance_hand_values():
    # two anchors; student at 0 deg, anchors at 0 and 90 deg -> cos (1, 0); teacher cos (0, 1)
    z = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    e = math.e
    s = torch.tensor([e / (e + 1), 1 / (e + 1)])
    expected = 10 * float(((s - s.flip(0)) ** 2).mean())
    assert relative_distance(z, t, anchors).item() == pytest.approx(expected, abs=1e-6)
    assert relative_distance(t, t, anchors).item() == pytest.approx(0.0, abs=1e-7)


def test_rise_classifier_starts_from_text_embeddings_and_anchors_are_source_domains():
    c = ctx()
    algo = create_algorithm("rise", c, create_student("efficientnet_lite0", pretrained=False))
    assert torch.equal(algo.classifier.weight, c.text_classifier)
    assert torch.all(algo.classifier.bias == 0)
    assert algo.anchor_names == ["art painting", "photo"]
    assert algo.anchor_text.shape == (C, 2, D)
    custom = create_algorithm("rise", c, create_student("efficientnet_lite0", pretrained=False),
                              {"anchors": "bright photo, dark photo, sketch"})
    assert custom.anchor_names == ["bright photo", "dark photo", "sketch"]


def test_rise_loss_is_the_weighted_sum_and_trains_everything():
    c = ctx()
    algo = create_algorithm("rise", c, create_student("efficientnet_lite0", pretrained=False),
                            {"w1": "0.9", "w2": "0.1", "w3": "1"})
    algo.begin_stage(algo.stages()[0])
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    logs = algo.update(batch())
    assert logs["loss"] == pytest.approx(0.9 * logs["kl"] + 0.1 * logs["ce"] + logs["abs"] + logs["rel"], rel=1e-5)
    after = algo.state_dict()
    for key in ("projection.weight", "classifier.weight", "student.backbone.conv_head.weight"):
        assert not torch.equal(before[key], after[key]), key
    assert torch.equal(before["text"], after["text"]) and torch.equal(before["anchor_text"], after["anchor_text"])


def test_sd_refuses_black_box():
    with pytest.raises(ConfigError, match="white-box"):
        create_algorithm("sd", ctx(encoder=None), None)


def test_sd_trains_a_copy_and_leaves_the_teacher_alone(tiny_teacher):
    enc = tiny_teacher.image_encoder()
    x = torch.rand(5, 3, 24, 24)
    t_before = tiny_teacher.embed_images(x)
    algo = create_algorithm("sd", ctx(encoder=enc, size=24), None)
    assert algo.image_size == 24 and algo.student.feature_dim == D
    assert not any(p.data_ptr() == q.data_ptr() for p in algo.student.parameters() for q in enc.parameters())
    algo.begin_stage(algo.stages()[0])
    w0 = algo.student.backbone.fc.weight.clone()
    for _ in range(3):
        algo.update(batch(size=24))
    assert not torch.equal(w0, algo.student.backbone.fc.weight)  # the copy learned
    assert torch.equal(t_before, tiny_teacher.embed_images(x))  # the teacher did not change
    algo.eval()
    with torch.no_grad():
        z = algo.student(x)
        assert torch.allclose(algo.predict(x), 100 * F.normalize(z, dim=-1) @ algo.text.t(), atol=1e-4)


class _ResizingEncoder(torch.nn.Module):
    """Like the conse/lit encoders: resizes its input to ``image_size``; a conv net with global pooling."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.conv = torch.nn.Conv2d(3, D, 5, stride=2)
        self.sizes: list[int] = []

    def forward(self, x):
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        self.sizes.append(x.shape[-1])
        return self.conv(x).mean(dim=(2, 3))


def test_sd_copy_at_another_input_size():
    """sd:image_size=N trains the copy at N px (the encoder's own resize set to N); a size it cannot take is refused."""
    enc = _ResizingEncoder(24)
    algo = create_algorithm("sd", ctx(encoder=enc, size=24), None, {"image_size": 16})
    assert algo.image_size == 16 and algo.student.backbone.image_size == 16 and enc.image_size == 24
    algo.begin_stage(algo.stages()[0])
    algo.student.backbone.sizes.clear()
    algo.update(batch(size=16))
    assert algo.student.backbone.sizes == [16]
    assert create_algorithm("sd", ctx(encoder=enc, size=24), None).image_size == 24
    with pytest.raises(ConfigError, match="image_size=3"):
        create_algorithm("sd", ctx(encoder=enc, size=24), None, {"image_size": 3})


def test_sd_on_a_random_open_clip_teacher(image_folder, tmp_path):
    import json

    import open_clip

    from helpers import TINY_CLIP, tiny_cfg
    from vl2v.experiment.run import run_experiment

    cfgfile = tmp_path / "vl2v-tiny-clip-sd.json"
    cfgfile.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfgfile)
    cfg = tiny_cfg(image_folder, tmp_path / "runs", ["sd", "adip"], targets=(0,),
                   teacher="openclip:vl2v-tiny-clip-sd:none")
    res = run_experiment(cfg, log=lambda s: None)
    sd = next(f for f in res["finals"] if f["algorithm"] == "sd")
    assert 0 <= sd["selected"]["ood_acc"] <= 1
    conf = json.loads((tmp_path / "runs" / "sd" / "target-0-art" / "seed0" / "config.json").read_text())
    assert conf["input_size"] == 32  # the teacher's own input size


def test_white_box_algorithms_need_white_box_configuration(image_folder, tmp_path):
    from helpers import tiny_cfg
    from vl2v.experiment.run import run_experiment

    cfg = tiny_cfg(image_folder, tmp_path / "runs", ["sd"], targets=(0,), blackbox=True)
    with pytest.raises(ConfigError, match="white-box"):
        run_experiment(cfg, log=lambda s: None)


class _ResizingTeacher:
    """The tiny test teacher with an encoder that resizes its input to the teacher's own size (as conse/lit do)."""

    @staticmethod
    def create(spec=None, **opts):
        from conftest import TinyTeacher

        class Resizing(TinyTeacher):
            backend = "tiny-resize-test"

            def __init__(self) -> None:
                super().__init__(size=24)
                inner = self.encoder

                class Enc(torch.nn.Module):
                    def __init__(self) -> None:
                        super().__init__()
                        self.inner, self.image_size = inner, 24

                    def forward(self, x):
                        return self.inner(F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear",
                                                        align_corners=False))

                self.encoder = Enc().eval()

            def identity(self) -> str:
                return "tiny-resize-test(size=24)"

        return Resizing()


def test_a_loaded_sd_run_is_the_model_trained_at_its_own_image_size(image_folder, tmp_path):
    """A run of sd:image_size=16 on a teacher of 24 px loads (predict, export, benchmarks) as the copy at 16 px:
    the same predictions, to the digit written, as the trained model's on the target's images."""
    import json

    from helpers import tiny_cfg
    from vl2v.experiment.run import run_experiment
    from vl2v.runs.model import load_run_model
    from vl2v.serving.images import load_image
    from vl2v.teachers.registry import TEACHERS, register_teacher

    if "tiny-resize-test" not in TEACHERS:
        register_teacher("tiny-resize-test", white_box=True, summary="test-only resizing teacher")(_ResizingTeacher.create)
    cfg = tiny_cfg(image_folder, tmp_path / "runs", ["sd:image_size=16"], targets=(0,), teacher="tiny-resize-test",
                   blackbox=False)
    run_experiment(cfg, log=lambda s: None)
    run = next((tmp_path / "runs").glob("sd*/target-0-*/seed0"))
    loaded = load_run_model(run)
    assert loaded.image_size == 16 and loaded.algorithm.student.backbone.image_size == 16
    preds = json.loads((run / "predictions.json").read_text())
    items = preds["items"] if isinstance(preds, dict) else preds
    x = torch.stack([load_image(image_folder / p["path"], loaded.image_size) for p in items])
    with torch.no_grad():
        logits = loaded.algorithm.predict(x)
    assert logits.argmax(-1).tolist() == [it["pred"] for it in items]
    # margin: the predicted class's logit over the true one's (4 decimals written); the logits are 100 cos, so a
    # copy run at another input size moves them by far more than the rounding
    margin = logits.max(-1).values - logits[torch.arange(len(items)), [it["label"] for it in items]]
    assert any(it["margin"] > 1 for it in items)
    assert torch.allclose(margin, torch.tensor([it["margin"] for it in items]), atol=1e-3)
    # benchmarks/inference.py times that copy (named as such, not as the config's registry student) beside the
    # teacher it was distilled from (--teacher), in one run
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_inference", Path(__file__).parents[1] / "benchmarks" / "inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out, threads = tmp_path / "bench.json", torch.get_num_threads()
    try:
        assert bench.main(["--run", str(run), "--teacher", "tiny-resize-test", "--no-conse", "--no-openclip",
                           "--sizes", "16",
                           "--batches", "2", "--min-time", "0.01", "--threads", "1", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark sets the process's threads
    res = json.loads(out.read_text())["results"]
    assert [r["model"] for r in res] == ["teacher: tiny-resize-test", "student: PyTorch 16px", "student: ONNX 16px"]
    assert all(r["ratio_to"]["teacher: tiny-resize-test"] > 0 for r in res)
