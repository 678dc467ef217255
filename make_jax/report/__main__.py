"""`python -m make_jax.report DIR [--out PAGE.html]` (see make_jax.report)."""

import argparse
import sys


def main(argv=None) -> int:
    from make_jax.report import __doc__ as doc
    from make_jax.report import build_report

    p = argparse.ArgumentParser(prog="python -m make_jax.report", description=doc.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("dir", help="a run directory, a sweep directory, or a folder of results")
    p.add_argument("--out", default=None, help="the page to write (default DIR/report.html)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = p.parse_args(argv)
    try:
        page = build_report(args.dir, args.out, bootstrap=args.bootstrap, seed=args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
