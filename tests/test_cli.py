"""The ``ofas-wrap inspect`` command."""

import json
import subprocess
import sys

import pytest

from ofas_wrap.cli import main


def test_inspect_prints_plan_table(capsys):
    assert main(["inspect", "cifar:resnet20"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0" in out and "layer3.2" in out
    assert "projection" in out and "identity" in out
    assert "OFAS-I, 16 -> 9 gates" in out


def test_inspect_input_size_changes_flops(capsys):
    main(["inspect", "torchvision:resnet18", "--input-size", "64", "--json"])
    small = json.loads(capsys.readouterr().out)
    main(["inspect", "torchvision:resnet18", "--input-size", "128", "--json"])
    large = json.loads(capsys.readouterr().out)
    assert small["input_size"] == [3, 64, 64]
    assert large["blocks"][0]["flops"] == pytest.approx(4 * small["blocks"][0]["flops"])


def test_inspect_bad_spec_is_a_clear_error(capsys):
    assert main(["inspect", "resnet50"]) == 2
    assert "SOURCE:NAME" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "ofas_wrap.cli", "inspect", "timm:resnet18", "--input-size", "64"],
                            capture_output=True, text=True, check=True)
    assert "layer4.1" in result.stdout


def test_version_flag_prints_the_package_version(capsys):
    import ofas_wrap

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"ofas-wrap {ofas_wrap.__version__}\n"
