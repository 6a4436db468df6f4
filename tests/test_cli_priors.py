from reference import caffe_count_outside
from singleshot.cli import main


def test_priors_command_prints_levels_and_totals(capsys):
    assert main(["priors", "ssd300_voc"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.split() and line.split()[0].isdigit()]
    assert [r[1] for r in rows] == ["38x38", "19x19", "10x10", "5x5", "3x3", "1x1"]
    assert [int(r[3]) for r in rows] == [4, 6, 6, 6, 4, 4]
    assert [int(r[4]) for r in rows] == [5776, 2166, 600, 150, 36, 4]
    outside = caffe_count_outside("ssd300_voc")  # Caffe's boxes, counted one by one
    assert [int(r[5]) for r in rows] == outside
    assert rows[0][6:] == ["30x30,", "42x42,", "42x21,", "21x42"]
    assert out[-1].startswith(f"total: 8732 default boxes, {sum(outside)} reach outside")


def test_priors_command_ssd512_and_bad_preset(capsys):
    assert main(["priors", "ssd512_coco", "--clip", "none"]) == 0
    assert "total: 24564 default boxes" in capsys.readouterr().out
    assert main(["priors", "ssd999"]) == 1
    assert "unknown model" in capsys.readouterr().err
