"""Pieces the benchmark scripts share: the process's peak memory and a stand-in task."""
import resource


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class DictionaryTask:
    """What ``build_model`` reads from a task: one dictionary of ``vocab`` symbols (the special ones,
    then ``prefix0``, ``prefix1``, ...) as source and target."""

    def __init__(self, vocab: int, prefix: str = "w"):
        from fairseq.data import Dictionary

        dictionary = Dictionary()
        for i in range(vocab - len(dictionary)):
            dictionary.add_symbol("{}{}".format(prefix, i))
        self.source_dictionary = self.target_dictionary = dictionary
