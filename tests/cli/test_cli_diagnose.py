import textwrap

from trainspect.cli import main


def test_diagnose_a_builtin_recipe_without_sibling(capsys):
    assert main(["diagnose", "--width", "4", "--batch-size", "256", "--data", "0.25", "--no-sibling"]) == 0
    out = capsys.readouterr().out
    assert "Q1:" in out and "Q2a:" in out and "training error" in out
    # width 4 with one step per epoch under-fits: the path needs connectivity, which was not measured
    assert "needs 'mode_connectivity_peak'" in out


def test_diagnose_a_user_model_from_a_file(tmp_path, capsys):
    src = tmp_path / "mine.py"
    src.write_text(textwrap.dedent("""
        import torch
        from trainspect.diagnosis.recipes import RECIPES

        def setup():
            r = RECIPES["digits-mlp"]
            data = r.data()
            return {"model": r.train(16, 128, 0.5, 0), "train": data.subset(0.5), "val": (data.x_test, data.y_test),
                    "sibling": r.train(16, 128, 0.5, 1)}
    """))
    assert main(["diagnose", "--from", f"{src}:setup"]) == 0
    out = capsys.readouterr().out
    assert "remedy:" in out and "CKA" in out
    assert main(["diagnose", "--from", f"{src}:nothing"]) == 2
