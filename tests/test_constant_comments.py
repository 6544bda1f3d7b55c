"""--help prints each constant's comment; one too long for a line goes on below it, aligned."""
from pipeline import cli

HEADER = '''import sys
topk: ">= 1" = 3                # how many
layer = "fc"                    # the layer, a comment too long
                                # for one line
# a section comment of the next block
alpha = 1.0                     # one line
                                  # a comment in another column
beta = 2                        # first
                                # second
                                # third

                                # after a blank line
gamma = 3                       # g
config = configure(globals())
'''


def test_a_constants_comment_continues_on_aligned_comment_lines_only(tmp_path):
    """Aligned comment-only lines right below continue a constant's comment; a section comment, one in
    another column or one after a blank line does not."""
    step = tmp_path / "step.py"
    step.write_text(HEADER)
    assert cli._comments(step) == {"topk": "how many", "layer": "the layer, a comment too long for one line",
                                   "alpha": "one line", "beta": "first second third", "gamma": "g"}
