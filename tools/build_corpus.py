"""Builds the built-in corpus shipped as archlab/sandbox/corpus/pystdlib.txt.gz.

Run once by a maintainer (the result is committed, so every machine trains on the same
bytes whatever its Python version): Python's reference documentation topics followed by
the top-level standard-library modules, in sorted order, each preceded by a header line.
The Python Software Foundation licence allows redistribution.
"""

import gzip
import pathlib
import pydoc_data.topics as topics
import sysconfig

OUT = pathlib.Path(__file__).resolve().parents[1] / "archlab/sandbox/corpus/pystdlib.txt.gz"
MAX_BYTES = 3_000_000


def main() -> None:
    docs = [f"### doc: {name}\n{topics.topics[name]}" for name in sorted(topics.topics)]
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    sources = [
        f"### file: {p.name}\n{p.read_text(encoding='utf-8', errors='replace')}" for p in sorted(stdlib.glob("*.py"))
    ]
    text, size = [], 0
    # Interleave docs and sources so both splits see prose and code.
    for i in range(max(len(docs), len(sources))):
        for part in (docs[i : i + 1], sources[i : i + 1]):
            for doc in part:
                if size + len(doc) > MAX_BYTES:
                    continue
                text.append(doc)
                size += len(doc)
    OUT.write_bytes(gzip.compress("\n\n".join(text).encode("utf-8"), mtime=0))
    print(f"{OUT}: {size} characters, {OUT.stat().st_size} bytes compressed")


if __name__ == "__main__":
    main()
