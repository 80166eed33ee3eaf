"""The render settings are declared once (``audiostory_core/settings.py``) and every surface derives them.

* every node widget of a setting has the core's default, range and choices (read from the real
  ComfyUI node schemas, in a separate Python: the ComfyUI-free tests must not import comfy);
* a sampler added to ``SAMPLERS`` (one entry) reaches every CLI command, batch's checks and the
  Sampler node, with no other edit;
* the CLI, batch and re-roll use the same names and values.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import comfy_server
from audiostory_core.cli.main import build_parser
from audiostory_core.errors import InputError
from audiostory_core.settings import SETTINGS, RenderSettings
from audiostory_core.tasks.reroll import dump_settings
from audiostory_core.validation import check_settings
from conftest import need

ROOT = Path(__file__).resolve().parents[1]
# widgets whose name ComfyUI's convention chose (the tooltip names the setting)
WIDGET_SETTING = {"cfg": "guidance", "sampler_name": "sampler", "curve": "crossfade_curve"}
# widgets named like a setting that are another setting: the captioner's VLM token budget, the training
# node's optimiser steps and seed (TrainConfig's, nodes/training_steps.py LIMITS)
NOT_A_SETTING = {("AudioStoryVideoCaptioner", "max_new_tokens"), ("AudioStoryTrainLora", "steps"),
                 ("AudioStoryTrainLora", "seed")}

_PRELUDE = r'''
import importlib, importlib.util, json, sys, types
sys.path.insert(0, sys.argv[1])
pkg = types.ModuleType("audiostory_pack"); pkg.__path__ = [sys.argv[2]]; sys.modules["audiostory_pack"] = pkg
import comfy.cli_args
comfy.cli_args.args.cpu = True
'''

_ADD_SAMPLER = r'''
name = "audiostory_pack.audiostory_core.settings"
importlib.import_module("audiostory_pack.audiostory_core")
spec = importlib.util.find_spec(name)
src = open(spec.origin).read()
assert src.count('SAMPLERS = ("euler", ') == 1
mod = importlib.util.module_from_spec(spec)
sys.modules[name] = mod
exec(compile(src.replace('SAMPLERS = ("euler", ', 'SAMPLERS = ("euler", "midpoint", '), spec.origin, "exec"),
     mod.__dict__)
'''

_SCHEMAS = r'''
nodes = importlib.import_module("audiostory_pack.nodes").load_nodes()
out = {"nodes": {c.__name__: c.INPUT_TYPES() for c in nodes}}
if len(sys.argv) > 3:
    from audiostory_pack.audiostory_core.cli.main import build_parser
    from audiostory_pack.audiostory_core.settings import RenderSettings
    from audiostory_pack.audiostory_core.validation import check_settings
    ap = build_parser()
    sub = next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction")
    out["cli"] = {cmd: next((a.choices for a in p._actions if a.dest == "sampler"), None)
                  for cmd, p in sub.choices.items()}
    out["batch"] = check_settings(RenderSettings(sampler="midpoint")).sampler
print(json.dumps(out, default=repr))
'''


def _in_comfy(body: str, *extra: str) -> dict:
    need(comfy_server.comfyui_available(), "ComfyUI", comfy_server.comfyui_missing_hint())
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run([sys.executable, "-c", _PRELUDE + body, str(comfy_server.comfyui_dir()), str(ROOT), *extra],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_setting_widget_has_the_core_default_range_and_choices():
    schemas = _in_comfy(_SCHEMAS)["nodes"]
    seen = set()
    for node, types in schemas.items():
        for section in ("required", "optional"):
            for widget, (kind, opts) in types.get(section, {}).items():
                name = WIDGET_SETTING.get(widget, widget)
                if name not in SETTINGS or (node, widget) in NOT_A_SETTING or kind not in ("INT", "FLOAT", "COMBO"):
                    continue
                s, where = SETTINGS[name], f"{node}.{widget}"
                seen.add(name)
                if widget != name:
                    assert f"'{name}'" in opts["tooltip"], f"{where}: the tooltip must name the setting"
                if name == "sampler":   # the core samplers first, under their node names; ComfyUI's after them
                    core = ["reference_euler"] + [f"audiostory_{x}" for x in s.choices if x != "euler"]
                    assert opts["options"][:len(core)] == core, where
                    assert not any(o.startswith("audiostory_") for o in opts["options"][len(core):]), where
                elif s.choices:
                    assert opts["options"] == list(s.choices), where
                if s.choices:
                    assert opts["default"] == (s.default if name != "sampler" else "reference_euler"), where
                    continue
                assert opts["default"] == s.default, where
                assert opts["max"] == s.max, where
                assert opts["min"] == (0 if name == "sample_rate" else s.min), where   # 0 = the VAE's rate
    # every render setting a node takes is covered (lead_phrase has no widget: the planner is greedy and verbatim)
    assert seen == set(SETTINGS) - {"lead_phrase"}


def test_one_new_sampler_reaches_every_cli_command_batch_and_the_sampler_node():
    r = _in_comfy(_ADD_SAMPLER + _SCHEMAS, "with-cli")
    assert {cmd: ("midpoint" in (c or [])) for cmd, c in r["cli"].items() if c is not None} == \
        {"generate": True, "dub": True, "continue": True, "batch": True}
    assert r["batch"] == "midpoint"
    assert "audiostory_midpoint" in r["nodes"]["AudioStorySampler"]["required"]["sampler_name"][1]["options"]


def test_cli_defaults_are_the_library_defaults_for_every_command():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for cmd in ("generate", "dub", "continue", "batch"):
        args = sub.choices[cmd]._defaults | {a.dest: a.default for a in sub.choices[cmd]._actions}
        assert {n: args[n] for n in SETTINGS} == {n: s.default for n, s in SETTINGS.items()}, cmd


def test_reroll_dump_uses_the_setting_names():
    meta = dump_settings(RenderSettings(crossfade=2.5, crossfade_curve="equal_power", seed=7))
    assert json.loads(meta["crossfade_curve"]) == "equal_power" and json.loads(meta["seed"]) == 7
    assert "curve" not in meta and "max_new_tokens" not in meta     # a re-roll dump holds the render only


@pytest.mark.parametrize("key,value,message", [("guidance", 101.0, "guidance must be a finite number between 0 and 100"),
                                               ("sampler", "dpm", "sampler must be one of euler, heun, dpmpp, unipc"),
                                               ("max_new_tokens", 32769, "max_new_tokens must be between 1 and 32768")])
def test_checks_name_the_setting_and_its_core_limit(key, value, message):
    with pytest.raises(InputError, match=f"'{key}': {message}"):
        check_settings(RenderSettings(**{key: value}))
