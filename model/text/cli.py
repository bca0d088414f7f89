"""``mamtra normalize`` and ``mamtra phonemize``: the text front-end from the command line.

Both read TEXT from the argument, or from standard input when it is ``-`` or absent, and print one piece per line
(the pieces the service would synthesise one by one).
"""

from __future__ import annotations

import argparse
import sys


def _text(args: argparse.Namespace) -> str:
    return sys.stdin.read() if args.text in (None, "-") else args.text


def _cmd_normalize(args: argparse.Namespace) -> int:
    from model.text.split import SplitConfig, chunk_text

    for piece in chunk_text(_text(args), SplitConfig(max_chars=args.max_chars)):
        print(piece)
    return 0


def _cmd_phonemize(args: argparse.Namespace) -> int:
    from model.text.frontend import FrontendConfig, TextFrontend
    from model.text.split import SplitConfig

    front = TextFrontend(FrontendConfig(language=args.language, split=SplitConfig(max_chars=args.max_chars)))
    for piece in front.iter_pieces(_text(args)):
        if args.words:
            for item in piece.words:
                print(f"{item.word}\t{' '.join(item.phonemes)}")
        elif args.ids:
            print(" ".join(map(str, piece.encoded.ids)))
        else:  # words separated by spaces, pause marks kept after their word
            print("".join(("" if item.is_punctuation or n == 0 else " ") + "".join(item.phonemes)
                          for n, item in enumerate(piece.words)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    norm = sub.add_parser("normalize", help="print the normalised words of TEXT, one piece per line")
    norm.add_argument("text", nargs="?", help="text; '-' or nothing reads standard input")
    norm.add_argument("--max-chars", type=int, default=250, help="longest piece (characters)")
    norm.set_defaults(func=_cmd_normalize)

    pho = sub.add_parser("phonemize", help="print the phonemes of TEXT (espeak-ng IPA), one piece per line")
    pho.add_argument("text", nargs="?", help="text; '-' or nothing reads standard input")
    pho.add_argument("--language", default="en-us", help="espeak-ng voice: en-us, en-gb")
    pho.add_argument("--max-chars", type=int, default=250, help="longest piece (characters)")
    out = pho.add_mutually_exclusive_group()
    out.add_argument("--words", action="store_true", help="one 'word<TAB>phonemes' line per word")
    out.add_argument("--ids", action="store_true", help="token ids of the fixed vocabulary")
    pho.set_defaults(func=_cmd_phonemize)
