"""deeprank.progress: one status line, throttled, silent when disabled."""

from deeprank.progress import Progress


def test_counting_shows_done_total_and_ends_the_line(capsys):
    bar = Progress("embedding", 3, interval=0.0)
    bar.advance(1)
    bar.advance(2)
    err = capsys.readouterr().err
    assert "\rembedding: [" in err and "3/3" in err and "100%" in err and err.endswith("\n")


def test_show_draws_a_bar_from_the_fraction_and_close_ends_the_line(capsys):
    bar = Progress("training", interval=0.0)
    bar.show("step 5", 0.25)
    bar.show("step 9", 7.0)  # clipped to 100%
    bar.close()
    err = capsys.readouterr().err
    assert "[#####...............]  25% step 5" in err and " 100% step 9" in err and err.endswith("\n")


def test_redraws_are_throttled_but_forced_ones_pass(capsys):
    bar = Progress("x", interval=3600.0)
    bar.show("first")
    bar.show("second")
    bar.show("third", force=True)
    err = capsys.readouterr().err
    assert "first" in err and "second" not in err and "third" in err


def test_disabled_or_empty_progress_writes_nothing(capsys):
    Progress("embedding", 10, enabled=False).advance(10)
    Progress("nothing", 0).advance(0)
    bar = Progress("quiet", enabled=False)
    bar.show("text", 0.5, force=True)
    bar.close()
    assert capsys.readouterr().err == ""
