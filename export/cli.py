"""The ``focalgraph`` command line: parse, call one library function, print.

Every command's options are the keyword arguments of the function it calls (``export.export``,
``export.validate``, ``export.inspect``). Errors are one line on stderr with no traceback: exit
2 for bad options or a damaged artifact, 1 for a failed conversion or validation.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import warnings

import click

from export.errors import FocalgraphError, ValidationFailed

_SPEC_OPTIONS = [
    click.option("--classes", type=int, help="C, the number of classes (fixed in the graph; default: dynamic)."),
    click.option("--gamma", help="Focusing parameter: a number, or one per class (comma-separated). Default 2."),
    click.option("--alpha", help="A number, or one per class (comma-separated)."),
    click.option("--class-weight", help="One weight per class, comma-separated."),
    click.option("--class-counts", help="Training samples per class, comma-separated: derives class weights."),
    click.option("--weighting", help="inverse-frequency | effective-number (with --class-counts)."),
    click.option("--beta", type=float, help="effective-number's beta (default 0.999)."),
    click.option("--from-logits/--from-probs", "from_logits", default=None, help="Predictions are logits (default) or probabilities."),
    click.option("--label-smoothing", type=float, help="Label smoothing in [0, 1]."),
    click.option("--ignore-index", type=int, help="Label (sparse) or sigmoid target value (such as -1) whose positions are left out."),
    click.option("--epsilon", type=float, help="Probability clip (with --from-probs)."),
    click.option("--axis", type=int, help="The class axis of the predictions (default -1, classes last; 1 for (N, C, H, W))."),
    click.option("--poly-epsilon", type=float, help="Poly-1's epsilon >= -1 (Leng et al. 2022): adds epsilon (1 - p_t)**(gamma + 1). Default 0."),
    click.option("--gamma-negative", help="Sigmoid: the focusing of negatives (Ridnik et al. 2021), a number or one per class. Default: gamma."),
    click.option("--probability-margin", type=float, help="Sigmoid: the asymmetric loss's probability margin in [0, 1). Default 0."),
    click.option("--weighted/--unweighted", "weighted", default=None, help="The graph takes a third input, weights, of the loss's shape."),
    click.option("--reduction", help="none | sum | mean (sigmoid: also normalized | per_sample_normalized): the "
                 "spec's own reduction (an artifact carries every form)."),
    click.option("--rank", type=int, help="Rank of the predictions, class axis included (default 2)."),
    click.option("--dtype", help="float32 (default) | float16 | float64."),
]
_PROVIDER = click.option(
    "--provider", default="auto", show_default=True, help="ONNX Runtime execution provider: auto | cpu | cuda."
)
_FORCE = click.option("--force", is_flag=True, help="Replace the output if it exists (docs/outputs.md).")
_PUBLIC_KEY = click.option(
    "--public-key", type=click.Path(dir_okay=False),
    help="Refuse the artifact unless its signature.sig verifies with this public key (PEM; needs focalgraph[signing]).",
)


def _set_verbose(context, parameter, value):
    if value:
        from export.quiet import set_verbose

        set_verbose(True)


# Accepted after the command too (`focalgraph export --verbose ...`), not only before it.
_VERBOSE = click.option("--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_set_verbose,
                        help="Show TensorFlow's, tf2onnx's and ONNX Runtime's own logs.")


def _with(options):
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True, help="Show TensorFlow's, tf2onnx's and ONNX Runtime's own logs.")
@click.version_option(package_name="focalgraph", prog_name="focalgraph")
def cli(verbose):
    """Focal losses as SavedModel and ONNX artifacts, with proven parity."""
    from export.quiet import set_verbose

    if verbose:
        set_verbose(True)


@cli.command("export")
@_VERBOSE
@click.option("--preset", help="multilabel-lsr | multi-category | sparse-softmax (the seeds' losses).")
@click.option("--variant", help="sparse-softmax | softmax | sigmoid.")
@click.option("--spec", type=click.Path(dir_okay=False), help="A FocalSpec JSON file (spec.json of an artifact).")
@click.option("--keras", type=click.Path(dir_okay=False),
              help="A .keras model file: the loss it was compiled with, at its output's rank and class count.")
@_with(_SPEC_OPTIONS)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact directory to create.")
@click.option("--format", "format", default="savedmodel,onnx", show_default=True, help="savedmodel, onnx or both.")
@click.option("--opset", type=int, help="ONNX opset, 13 to 18 (default 17).")
@click.option("--no-validate", is_flag=True, help="Skip the ONNX Runtime vs TensorFlow parity check.")
@click.option("--force", is_flag=True, help="Replace --out if it exists (an artifact or an empty directory).")
@click.option("--xla/--no-xla", default=True, show_default=True,
              help="Compile the SavedModel's signatures with XLA: faster per call, one compilation per new shape.")
@_PROVIDER
def export_command(out, no_validate, **options):
    """Export one loss to an artifact directory (spec, SavedModel, ONNX, reference, report)."""
    from export.exporter import export

    with _untranslated_as_one_line("focalgraph export"):
        result = export(out, validate=not no_validate, **options)
    click.echo(_exported(result))


@cli.command("export-defaults")
@_VERBOSE
@click.option("--out", default="artifacts", show_default=True, type=click.Path(file_okay=False), help="Parent directory.")
@click.option("--opset", type=int, help="ONNX opset, 13 to 18 (default 17).")
@click.option("--no-validate", is_flag=True, help="Skip the parity checks.")
@click.option("--force", is_flag=True, help="Replace artifacts that exist.")
@click.option("--xla/--no-xla", default=True, show_default=True, help="Compile the SavedModels' signatures with XLA.")
@_PROVIDER
def export_defaults_command(out, no_validate, **options):
    """Export the built-in artifacts: the three presets and the common variants."""
    from export.exporter import export_defaults

    export_defaults(out, validate=not no_validate, progress=lambda name, result: click.echo(_exported(result)), **options)


@cli.command("validate")
@_VERBOSE
@click.argument("artifact", type=click.Path())
@_PROVIDER
@click.option("--shapes", help="Prediction shapes to test, e.g. 8x10,0x10 (default: several per dynamic dimension).")
@click.option("--atol", type=float, help="Absolute tolerance (default by dtype: 1e-5 for float32).")
@click.option("--rtol", type=float, help="Relative tolerance (default by dtype: 1e-5 for float32).")
@click.option("--reference-only", is_flag=True, help="Compare with reference.npz; does not import TensorFlow.")
@click.option("--report", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@_FORCE
@_PUBLIC_KEY
def validate_command(artifact, **options):
    """Run ONNX Runtime and TensorFlow (or the stored reference) and compare every output."""
    from export.validation import format_report, validate

    report = validate(artifact, **options)
    click.echo(format_report(report))
    return 0 if report["passed"] else 1


@cli.command("inspect")
@_VERBOSE
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_PUBLIC_KEY
def inspect_command(artifact, as_json, public_key):
    """Show an artifact's spec, signatures, ONNX interface and ops, after verifying its manifest."""
    from export.inspection import format_inspection, inspect

    info = inspect(artifact, public_key=public_key)
    click.echo(json.dumps(info, indent=2) if as_json else format_inspection(info))
    return 0 if info["consistency"]["passed"] else 1


@cli.command("eval")
@_VERBOSE
@click.argument("artifact", type=click.Path())
@click.option("--predictions", required=True,
              help="Predictions: FILE.npy, FILE.npz[:ARRAY], FILE.parquet[:COLUMN], or a Parquet dataset DIR[:COLUMN] or 'GLOB[:COLUMN]'.")
@click.option("--labels", required=True, help="Labels or targets, one row per prediction row (same formats).")
@click.option("--out", type=click.Path(), help="Write the per-sample losses here: FILE.npy, or a new directory (no suffix) for a Parquet dataset.")
@click.option("--summary", type=click.Path(dir_okay=False), help="Write the summary here (JSON).")
@click.option("--id-column", help="A column of the predictions' Parquet input to carry into --out and name the hardest rows by.")
@click.option("--weights", help="A weighted loss's weights, the loss's shape per row (same formats as --labels).")
@click.option("--weight-column", help="A column of the predictions' Parquet input: a weight >= 0 per row that multiplies its loss.")
@click.option("--batch-size", type=int, default=4096, show_default=True, help="Rows per batch (fewer where 16 MiB of predictions fill it, 4 MiB for sigmoid losses).")
@click.option("--top-k", type=int, default=10, show_default=True, help="How many of the hardest rows to report, 0 to 10000.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write a bar chart of the mean loss per class here (.png; needs focalgraph[bench]).")
@click.option("--engine", default="local", show_default=True, help="local | ray | spark (Parquet inputs; extras focalgraph[ray], focalgraph[spark]).")
@click.option("--address", help="--engine ray: the Ray cluster to join (default: $RAY_ADDRESS, else a local Ray).")
@click.option("--master", help="--engine spark: the Spark master (default local[*]).")
@click.option("--force", is_flag=True, help="Replace --out (a .npy), --summary and --plot if they exist "
              "(never a dataset directory).")
@_PROVIDER
@_PUBLIC_KEY
def eval_command(artifact, **options):
    """Per-sample losses of a file of predictions with ONNX Runtime alone (no TensorFlow)."""
    from export.evaluation import evaluate
    from export.summary import format_summary

    _verify_signature(artifact, options.pop("public_key"))
    summary = evaluate(artifact, progress=sys.stdout.isatty(), **options)
    click.echo(format_summary(summary))


@cli.command("attach")
@_VERBOSE
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="The model's ONNX file.")
@click.option("--output", required=True, help="The model output the loss takes as its predictions.")
@click.option("--loss", required=True, type=click.Path(), help="A loss artifact directory (or its model.onnx).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The combined ONNX file to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--check-shapes", help="The model's input shapes for the self-check, e.g. image=1x512x512x3 "
              "(default: 2 for each symbolic dimension; each input once, sizes from 1, at most 2**26 elements).")
@_PUBLIC_KEY
def attach_command(**options):
    """Join a loss to a model's ONNX graph: the model's outputs plus the loss's, one more input (labels)."""
    from export.attach import attach

    _verify_signature(options["loss"], options.pop("public_key"))
    combined = attach(**options)
    inputs = ", ".join(i.name for i in combined.graph.input)
    outputs = ", ".join(o.name for o in combined.graph.output)
    click.echo(f"wrote {options['out']}: inputs {inputs}; outputs {outputs}")


@cli.command("embed")
@_VERBOSE
@click.option("--savedmodel", required=True, type=click.Path(file_okay=False), help="The model's SavedModel directory.")
@click.option("--output", required=True, help="The output of its serving_default signature the loss takes.")
@click.option("--loss", required=True, type=click.Path(file_okay=False), help="A loss artifact directory.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The SavedModel directory to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists (one embed wrote, or an empty directory).")
@_PUBLIC_KEY
def embed_command(**options):
    """One SavedModel: the model's inputs plus labels in, its outputs plus the per-sample loss out."""
    from export.embed import LOSS_OUTPUT, embed

    out = embed(**options)
    click.echo(f"wrote {out}: serving_default returns the model's outputs and {LOSS_OUTPUT}")


@cli.command("bench")
@_VERBOSE
@click.argument("artifacts", nargs=-1, type=click.Path())
@click.option("--provider", default="cpu", show_default=True, help="ONNX Runtime execution provider: auto | cpu | cuda.")
@click.option("--sizes", help="Predictions shapes, e.g. 100x1000,16384x1000 or 256x8x8x1000; each artifact takes those of its rank (default: 1e5 to 1.6e7 elements).")
@click.option("--repeats", type=int, default=21, show_default=True, help="Interleaved rounds; each figure is their minimum (median beside).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the results here, with a Markdown table (.md) and a plot (.png) beside it.")
@click.option("--force", is_flag=True, help="Replace the --json file, its .md and .png if they exist.")
@click.option("--eval-rows", type=int, default=0, show_default=True,
              help="Also time `focalgraph eval` of this many rows x 1000 classes of a sparse .npy against one read of it "
                   "(262144: 1 GiB); 0: not.")
def bench_command(artifacts, **options):
    """Time artifacts in TensorFlow and ONNX Runtime against Keras's focal losses and a read-once floor."""
    from export.bench import DEFAULT_ARTIFACTS, DEFAULT_SIZES, bench, markdown

    sizes = options.pop("sizes") or DEFAULT_SIZES
    results = bench(artifacts or DEFAULT_ARTIFACTS, sizes=sizes, **options)
    click.echo(markdown(results))


@cli.command("keygen")
@_VERBOSE
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (PEM, mode 0600); the public key goes to OUT.pub.")
def keygen_command(out):
    """Make a key pair for `sign` (P-256; needs focalgraph[signing])."""
    from export.signing import keygen

    private, public = keygen(out)
    click.echo(f"wrote {private} (private: keep it secret) and {public} (public: give it to whoever verifies)")


@cli.command("sign")
@_VERBOSE
@click.argument("artifact", type=click.Path())
@click.option("--key", required=True, type=click.Path(dir_okay=False), help="The private key (PEM) to sign with.")
@click.option("--force", is_flag=True, help="Replace the artifact's signature.sig if it exists (re-signing).")
@click.option("--unchecked-saved-model", is_flag=True,
              help="Without TensorFlow: sign an artifact whose saved_model/ no witness checked; its manifest records "
                   "that, and inspect and validate print it.")
def sign_command(artifact, key, force, unchecked_saved_model):
    """Sign every file of an artifact into its signature.sig (after its own checks; needs focalgraph[signing])."""
    from export.signing import sign

    click.echo(f"wrote {sign(artifact, key, force=force, unchecked_saved_model=unchecked_saved_model)}")


def _verify_signature(artifact, public_key) -> None:
    """--public-key for the commands whose library functions do not take it (eval, attach)."""
    if public_key is not None:
        from export.signing import verify

        verify(artifact, public_key)


@contextlib.contextmanager
def _untranslated_as_one_line(prefix: str):
    """`FocalSpec.from_keras`'s note on a Keras argument it does not reproduce, as one line on
    stderr (``PREFIX: warning: ...``) rather than Python's two-line warning; other warnings as usual."""
    from focal_graph.keras_specs import UntranslatedWarning

    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, UntranslatedWarning):
                click.echo(f"{prefix}: warning: {message}", err=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


def _exported(result) -> str:
    line = f"wrote {result.out} ({result.spec.name}; {', '.join(result.formats)})"
    report = result.validation
    if report is None:
        return line + "; not validated"
    tolerance = report["tolerance"]
    relative = sum(verdict.get("relative_elements", 0) for verdict in report["outputs"])
    return (
        line + f"; ONNX Runtime ({report['onnxruntime']['provider']}) matches TensorFlow on {len(report['cases'])} cases"
        f" (every element within atol {tolerance['atol']:g} or rtol {tolerance['rtol']:g}"
        + (f"; {relative} loss elements above 1e-30 relatively, within the spec's bound)" if relative else ")")
    )


def _terminated(signum, frame):
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C: nothing half-written stays


def main(argv=None) -> int:
    """Entry point: runs the command and returns its exit code, printing errors as one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), "")
    prefix = f"focalgraph {command}".strip()
    signal.signal(signal.SIGTERM, _terminated)
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:  # not under nohup
        signal.signal(signal.SIGHUP, _terminated)
    try:
        code = cli.main(args=argv, prog_name="focalgraph", standalone_mode=False)
    except ValidationFailed as error:
        from export.validation import format_report

        click.echo(format_report(error.report), err=True)
        click.echo(f"{prefix}: error: {error}", err=True)
        return error.exit_code
    except FocalgraphError as error:
        click.echo(f"{prefix}: error: {error}", err=True)
        return error.exit_code
    except click.ClickException as error:
        click.echo(f"{prefix}: error: {error.format_message()}", err=True)
        return 2 if isinstance(error, click.UsageError) else error.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo(f"{prefix}: interrupted; nothing was written", err=True)
        return 130
    except Exception as error:
        if _caused_by_interrupt(error):  # e.g. Ctrl-C inside `import tensorflow`, re-raised as another error
            click.echo(f"{prefix}: interrupted; nothing was written", err=True)
            return 130
        raise
    return code if isinstance(code, int) else 0


def _caused_by_interrupt(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
