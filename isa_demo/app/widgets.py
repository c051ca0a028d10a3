"""The pieces every tab of the page shares: the page's CSS and script, the one place that turns an
exception into a message (:func:`guarded`), the method/backbone choices (:class:`Choices`) and two
components that hand the user's input over as given (:class:`ReferenceImage`, :class:`TopK`).

Messages are shown as text, never as Markdown or HTML (:func:`notice`): they may quote what the
user typed or the name of the file they uploaded.
"""
from __future__ import annotations

import functools
import html
import logging
import os
import traceback
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # an offline demo: no phoning home
# gradio's queue keeps its last GRADIO_ANALYTICS_MAX_EVENTS events (default 10,000) and, after every
# event (GRADIO_ANALYTICS_CACHE_FREQUENCY 1), summarises them all in a pandas table for its monitoring
# page, which this app does not serve (launch: enable_monitoring=False): under load that summary cost
# more than the query itself, and grew with every event kept
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "100")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

import gradio as gr  # noqa: E402
from gradio.state_holder import SessionState, StateHolder  # noqa: E402

from ..bench.plots import display_name  # noqa: E402
from ..errors import UserError  # noqa: E402
from .inputs import InputError, first_frame, upload_name  # noqa: E402
from .service import DemoService  # noqa: E402
from .viz import notice_markdown  # noqa: E402

log = logging.getLogger("isa_demo.app")

PRIVATE = {"api_visibility": "private"}
NO_LATEX = {"latex_delimiters": []}  # text that may quote the user: "$$" is two dollar signs, not maths

CSS = """
#results .caption-label, #inspector-top .caption-label {font-variant-numeric: tabular-nums;}
#notice blockquote, #failure-note blockquote {margin: 0.2em 0;}
/* captions that carry a mark (ground truth, rank under the other method) wrap instead of being cut off */
#inspector-top .caption-label, #compare-a .caption-label, #compare-b .caption-label {
  white-space: normal; max-width: calc(100% - 2 * var(--block-label-margin)); line-height: 1.25;}
/* a dropdown's text never runs under its arrow: it ends in an ellipsis before it */
input[role="combobox"] {text-overflow: ellipsis; padding-right: 2.4rem !important; min-width: 0;}
/* table headers break between words only */
#failure-table th span.header, #efficiency-table th span.header {word-break: keep-all; overflow-wrap: normal;}
/* a table wider than its box scrolls sideways, and says so */
#efficiency-table .virtual-table-viewport, #failure-table .virtual-table-viewport {
  scrollbar-width: auto; scrollbar-color: #8a8a8a #ececec;}
.table-wrap {position: relative;}
.table-wrap.isa-more-right::after {
  content: "more →"; position: absolute; top: 0; right: 0; height: 100%; width: 5.5em; pointer-events: none;
  z-index: 20;
  display: flex; align-items: flex-start; justify-content: flex-end; padding: 0.55em 0.4em 0 0;
  font-size: var(--text-sm); font-weight: 600; color: var(--body-text-color-subdued);
  background: linear-gradient(to right, transparent, var(--background-fill-primary) 65%);}
#attention-note, #failure-detail {min-height: 1.5em;}
/* the inspector's ground truth: thumbnails at most 112 px even for one image, so each fits whole */
#inspector-gt .grid-container {grid-template-columns: repeat(auto-fill, minmax(64px, 112px)) !important;}
/* galleries shrink their thumbnails rather than cut the last column off; three columns on a phone */
#results .grid-container, #attention .grid-container, #inspector-top .grid-container,
#compare-a .grid-container, #compare-b .grid-container {
  grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr));}
@media (max-width: 640px) {
  #results .grid-container, #inspector-top .grid-container {grid-template-columns: repeat(3, minmax(0, 1fr));}
}
/* numbers and short headers of the side tables never break inside a word or a number */
#pseudo-words th:first-child, #pseudo-words td:first-child, #timings td:last-child {white-space: nowrap;}
#pseudo-words th, #timings th {word-break: keep-all; overflow-wrap: normal;}
#failure-table td, #failure-table th {word-break: normal; overflow-wrap: normal;}
"""

# Runs once when the page loads (gr.Blocks.launch(js=...)): marks tables that scroll sideways (the
# CSS above shows "more →" on them) and remembers what the user typed in a Top-K box, which the
# search buttons send as typed (:func:`typed_k_js`) instead of the slider's silently clamped value.
PAGE_JS = """
() => {
  const mark = () => document.querySelectorAll('.virtual-table-viewport').forEach(v => {
    const wrap = v.closest('.table-wrap') || v.parentElement;
    const more = v.scrollWidth > v.clientWidth + 1 && v.scrollLeft + v.clientWidth < v.scrollWidth - 1;
    if (wrap) wrap.classList.toggle('isa-more-right', more);
    if (!v.__isaScroll) { v.__isaScroll = true; v.addEventListener('scroll', mark, {passive: true}); }
  });
  let queued = false;
  const later = () => { if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; mark(); }); } };
  new MutationObserver(later).observe(document.body, {childList: true, subtree: true});
  window.addEventListener('resize', later);
  document.addEventListener('input', e => {
    const t = e.target;
    if (t && t.matches && t.matches('.isa-k input[type=number]')) {
      t.dataset.typed = t.validity && t.validity.badInput ? 'not a number' : t.value;
    }
  }, true);
  later();
}
"""


def typed_k_js(elem_id: str, index: int) -> str:
    """An event's ``js``: input ``index`` becomes what the user typed in the Top-K box ``elem_id``
    (when they typed since the last search), so that the server checks the value as given."""
    return (f"(...args) => {{ const box = document.querySelector('#{elem_id} input[type=number]'); "
            f"if (box && 'typed' in box.dataset) {{ args[{index}] = box.dataset.typed; delete box.dataset.typed; }} "
            "return args; }")


def shown_k_js(elem_id: str) -> str:
    """A js-only step after a search: the Top-K box shows the slider's value (the K of the results
    shown), also where the stock slider left its box showing a clamped value it never took."""
    return (f"(k) => {{ const box = document.querySelector('#{elem_id} input[type=number]'); "
            "if (box && k !== null && k !== undefined && String(box.value) !== String(k)) box.value = k; return []; }")


class ReferenceImage(gr.Image):
    """``gr.Image`` that hands a file Pillow cannot open (corrupt, truncated, a decompression
    bomb) over as its upload path, so that the service can say what is wrong with it instead of
    the UI showing a bare "Error"; and refuses a path that is neither an upload nor a file the
    app serves (:func:`received_file`)."""

    is_template = True  # use the stock Image frontend

    def preprocess(self, payload):
        path = getattr(payload, "path", None)
        if path and not received_file(path):
            raise gr.Error(NOT_RECEIVED, print_exception=False)
        try:
            return super().preprocess(payload)
        except Exception:
            return str(path) if path else None


NOT_RECEIVED = ("the reference image is not a file this server received: upload it first (POST /gradio_api/upload, "
                "or gradio_client's handle_file) and send the path that upload answered")


def received_file(path) -> bool:
    """Whether ``path`` is an upload (under gradio's upload folder) or one of the files the app
    serves in place (``gr.set_static_paths``: the gallery, the world's test images): the only
    files a request may name. (Stock ``gr.Image`` opens any path a request names when the
    request leaves out ``meta``; this one does not.)"""
    from gradio.data_classes import _StaticFiles
    from gradio.utils import get_upload_folder

    try:
        real = os.path.realpath(os.fspath(path))
    except (TypeError, ValueError):
        return False
    for root in [get_upload_folder(), *_StaticFiles.all_paths]:
        root = os.path.realpath(os.fspath(root))
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


class Choice(gr.Dropdown):
    """``gr.Dropdown`` that hands its value over as given, for the service to accept or explain
    (``unknown method 'x'; choose one of ...``), the same for the page and the API (the stock
    dropdown answers a value outside its choices with its own message and a traceback in the log)."""

    is_template = True  # use the stock Dropdown frontend

    def preprocess(self, payload):
        return payload


class TopK(gr.Slider):
    """``gr.Slider`` that hands its value over as given (``"abc"``, ``0``, ``7.5``), for
    :func:`isa_demo.app.compose.check_k` to accept or explain, the same for the page and the API
    (the stock slider raises its own message, or a TypeError, before the handler runs)."""

    is_template = True  # use the stock Slider frontend

    def preprocess(self, payload):
        return payload


# ---------------------------------------------------------------------------------------- errors
FILE_INPUT = ('an uploaded file, {"path": PATH, "meta": {"_type": "gradio.FileData"}} with the PATH that '
              'POST /gradio_api/upload answered (gradio_client: handle_file(path)), or null')


class LazySessionState(SessionState):
    """gradio's per-session state, without computing the page's configuration as it goes.

    gradio's own builds the configuration of every block of the page when a session starts (~100
    blocks here: ~11 ms of the event loop's time), and again for each input and output of every
    event, with the value it carried; and every call of the HTTP API is a new session. That
    configuration serves only the session's deep links (:attr:`components`): here it is computed
    when they ask for it, from the same blocks, with the same values last set."""

    class _NoBlocks:
        def __init__(self, blocks):
            self.default_config, self.blocks = blocks.default_config, {}

    def __init__(self, blocks):
        super().__init__(self._NoBlocks(blocks))  # everything as gradio's, but no entry computed yet
        self._page_blocks = blocks.blocks
        self._values: dict[int, object] = {}  # the value last set per block, not yet in its entry

    def __setitem__(self, key: int, value) -> None:
        self._values.pop(key, None)  # gradio's recomputes the entry from the new block
        super().__setitem__(key, value)

    def _update_config(self, key: int) -> None:
        self.config_values.pop(key, None)
        self._values.pop(key, None)

    def _update_value_in_config(self, key: int, value) -> None:
        self._values[key] = value

    @property
    def components(self):
        configs = self.blocks_config
        for k, block in configs.blocks.items():
            if k in self._page_blocks and k not in self.config_values:
                self.config_values[k] = configs.config_for_block(k, [], block)
        for k, value in self._values.items():
            if k not in self.config_values:
                self.config_values[k] = configs.config_for_block(k, [], configs.blocks[k])
            if "props" in self.config_values[k]:
                self.config_values[k]["props"]["value"] = value
        self._values.clear()
        yield from super().components


class LazyStateHolder(StateHolder):
    """gradio's :class:`StateHolder` whose new sessions are :class:`LazySessionState`."""

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id not in self.session_data:
            self.session_data[session_id] = LazySessionState(self.blocks)
        return super().__getitem__(session_id)


class DemoBlocks(gr.Blocks):
    """``gr.Blocks`` that answers a request whose inputs gradio itself cannot read (too few of them,
    a reference that is not an uploaded file, a value of the wrong shape) with a message saying
    which input and what it must be, and keeps the server log free of tracebacks for them (gradio
    prints one for any exception in its input processing, and answers only "Error"); and whose
    sessions start without the page's configuration (:class:`LazySessionState`)."""

    @property
    def state_holder(self) -> StateHolder:
        try:
            return self.__dict__["_state_holder"]
        except KeyError:
            raise AttributeError("state_holder") from None

    @state_holder.setter
    def state_holder(self, holder: StateHolder) -> None:
        # gradio's app creates a plain StateHolder and hands it over here (StateHolder.set_blocks),
        # once per app: it becomes the lazy kind (a subclass without state of its own)
        if type(holder) is StateHolder:
            holder.__class__ = LazyStateHolder
        self.__dict__["_state_holder"] = holder

    async def preprocess_data(self, block_fn, inputs, state, explicit_call: bool = False):
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error as e:
            e.print_exception = False
            raise
        except Exception as e:  # noqa: BLE001 - the request's inputs, not the server, are at fault
            raise gr.Error(bad_input_message(block_fn, inputs, e), print_exception=False) from None

    def queue(self, *args, **kwargs):
        """``gr.Blocks.queue``; past ``max_size`` waiting requests a new one is refused with
        :data:`BUSY` (HTTP 503) instead of gradio's "Queue is full. Max size is N and size is N."."""
        super().queue(*args, **kwargs)
        queue = self._queue
        push = queue.push

        async def push_or_busy(*a, **kw):
            ok, detail, state = await push(*a, **kw)
            if state == "queue_full":
                detail = BUSY.format(waiting=len(queue), limit=queue.max_size)
            return ok, detail, state

        queue.push = push_or_busy
        return self


def preprocessed(api_name: str, blocks: list, values) -> list:
    """An endpoint's inputs as gradio's preprocessing hands them to a handler (each component's own
    ``preprocess``, after the same validation), for an endpoint registered with
    ``preprocess=False``: gradio itself runs each input's preprocessing as a task of its thread
    pool, one hop between threads per input and event, which under load costs more than the
    preprocessing. A component's ``gr.Error`` is the request's answer, as with gradio's; any other
    failure is said as :class:`DemoBlocks` says it."""
    out = []
    for block, value in zip(blocks, values):
        try:
            model = getattr(block, "data_model", None)
            if model is not None and value is not None:
                value = model.model_validate(value, context={"validate_meta": True})
            out.append(block.preprocess(value))
        except gr.Error as e:
            e.print_exception = False
            raise
        except Exception as e:  # noqa: BLE001 - the request's inputs, not the server, are at fault
            fn = SimpleNamespace(api_name=api_name, inputs=blocks)
            raise gr.Error(bad_input_message(fn, list(values), e), print_exception=False) from None
    return out


BUSY = ("the server is busy: {waiting} queries are already waiting (the limit is {limit}); nothing was run, "
        "retry in a few seconds")


def _input_label(block) -> str:
    return str(getattr(block, "label", None) or getattr(block, "elem_id", None) or block.get_block_name())


def bad_input_message(block_fn, inputs: list, error: Exception) -> str:
    """Which input of an event gradio could not read, and what it must be (never a traceback)."""
    from gradio.exceptions import InvalidPathError

    name = f"/{block_fn.api_name}" if getattr(block_fn, "api_name", None) else "this request"
    blocks = block_fn.inputs
    if len(inputs) < len(blocks):
        return (f"{name} takes {len(blocks)} inputs ({', '.join(_input_label(b) for b in blocks)}); "
                f"got {len(inputs)}")
    for i, (block, value) in enumerate(zip(blocks, inputs)):
        model = getattr(block, "data_model", None)
        if model is None or value is None:
            continue
        try:
            model.model_validate(value)
        except Exception:  # noqa: BLE001
            return f"{name}: input {i + 1} ({_input_label(block)}) must be {FILE_INPUT}; got {type(value).__name__}"
    if isinstance(error, InvalidPathError) or "not in the upload folder" in str(error) or "allowed" in str(error):
        return (f"{name}: a file the server did not receive as an upload cannot be used; send "
                f"{FILE_INPUT.removeprefix('an uploaded file, ')}")
    return f"{name}: the inputs could not be read ({type(error).__name__}); see {name} in /gradio_api/info"


def guarded(on_error: Callable[[str], object]):
    """Decorate a handler: a :class:`UserError` becomes ``on_error(its message)``; any other
    exception is logged with its traceback and becomes ``on_error(one line)``."""
    def wrap(fn):
        @functools.wraps(fn)
        def handler(*args):
            try:
                return fn(*args)
            except UserError as e:
                message = str(e)
            except Exception:  # noqa: BLE001 - a bug: the log gets the traceback, the page one line
                log.error("unexpected error in the demo:\n%s", traceback.format_exc())
                message = "something went wrong on the server; the query was not run. Try again, or another image"
            return on_error(message)
        return handler
    return wrap


def notice(message: str, warn: bool = True) -> str:
    """A message for the page (and a toast when ``warn``), shown as plain text."""
    if warn:
        gr.Warning(html.escape(message))  # toasts render HTML
    return notice_markdown(message)


def api_error(message: str):
    raise gr.Error(message, print_exception=False)


# ---------------------------------------------------------------------------------------- inputs
def still_reference(path):
    """An uploaded animated image becomes its first frame (what the search uses), so that the
    preview stops moving; returns ``(image, note)``."""
    frame, frames = first_frame(path)
    if frame is None:
        return gr.update(), ""
    name = upload_name(path)
    return frame, (f"“{name}” is animated ({frames} frames): its first frame is shown and searched"
                   if name else f"animated image ({frames} frames): its first frame is shown and searched")


def reference_input(label: str, elem_id: str, height: int) -> ReferenceImage:
    return ReferenceImage(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"],
                          height=height, elem_id=elem_id, format="png")


def top_k_slider(elem_id: str, maximum: int, value: int = 10, label: str = "Top-K") -> TopK:
    return TopK(1, maximum, value=value, step=1, label=label, elem_id=elem_id, elem_classes=["isa-k"],
                info=f"a whole number from 1 to {maximum}")


# ---------------------------------------------------------------------------------------- choices
@dataclass
class Choices:
    """The method and backbone choices every tab offers; the backbone is for ISA only."""

    service: DemoService
    methods: list[str]
    default_method: str
    backbones: list[str]
    default_backbone: str | None

    @classmethod
    def of(cls, service: DemoService) -> "Choices":
        c = service.catalogue
        return cls(service, c.method_choices(), c.default_method(), c.all_backbones(), c.default_backbone())

    def has_backbone(self, method: str | None) -> bool:
        return bool(self.backbones) and method == "isa"

    def name(self, method: str | None, backbone: str | None = None) -> str:
        """How the page names a choice: ``isa · mobilenetv3_small_100``, ``sum``."""
        try:
            v = self.service.catalogue.resolve(method, backbone)
        except InputError:
            return display_name(str(method or "?"), backbone if self.has_backbone(method) else None)
        return display_name(v.label, v.backbone_label)

    def pair(self, method_label: str, backbone_label: str, method: str | None = None, backbone: str | None = None,
             method_id: str | None = None, backbone_id: str | None = None) -> tuple[gr.Dropdown, gr.Dropdown]:
        """A method dropdown and its backbone dropdown (enabled only while the method is ISA); each
        at least 230 px wide, so that a row of two wraps before a backbone's name is cut."""
        method = method or self.default_method
        m = Choice(self.methods, value=method, label=method_label, elem_id=method_id, min_width=230)
        b = Choice(self.backbones, value=backbone or self.default_backbone, label=backbone_label,
                        interactive=self.has_backbone(method), elem_id=backbone_id, min_width=230)
        m.change(lambda v: gr.update(interactive=self.has_backbone(v)), m, b, queue=False, **PRIVATE)
        return m, b
