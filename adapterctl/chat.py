"""Chat templates: what a base model's template can render, asked before a prompt reaches the model.

Templates differ: most refuse roles they do not know (the tiny model's refuses `tool`), some refuse a
system message, some demand that user and assistant alternate. A request the template cannot render
is refused with a reason naming the message, and a feedback record it cannot render is skipped and
counted by the training run, never left to fail every later run.
"""

from __future__ import annotations

from adapterctl.errors import InvalidInput

# A template for base (non-chat) models that have none, so that chat feedback still trains.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token if m['role'] == 'assistant' else '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

# The smallest conversation that shows whether a template renders each role feedback may hold.
_PROBES = {
    "system": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
    "user": [{"role": "user", "content": "u"}],
    "assistant": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}],
    "tool": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "t"}],
}


def load_tokenizer(model_path: str):
    """The base model's tokenizer, with a plain chat template when it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ensure_chat_template(tokenizer)
    return tokenizer


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE


def supported_roles(tokenizer) -> list[str]:
    """The message roles the tokenizer's chat template renders."""
    return [role for role, messages in _PROBES.items() if render_problem(tokenizer, messages) is None]


def render_problem(tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str | None:
    """Why the template cannot render `messages` (its first line), or None when it can."""
    try:
        tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    except _template_errors() as exc:
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    return None


def training_problem(tokenizer, prompt: list[dict[str, str]], answer: str) -> str | None:
    """Why an example cannot be trained on: its prompt, or the prompt with its answer, does not render."""
    return render_problem(tokenizer, prompt) or render_problem(
        tokenizer, [*prompt, {"role": "assistant", "content": answer}], add_generation_prompt=False
    )


def render(tokenizer, messages: list[dict[str, str]], roles: list[str], field: str = "messages") -> str:
    """The prompt text for `messages`, or InvalidInput naming the message or reason the template refuses."""
    for index, message in enumerate(messages):
        if message["role"] not in roles:
            raise InvalidInput(
                f"{field}[{index}].role {message['role']!r} is not supported by the base model's chat template "
                f"(it renders {', '.join(roles)})",
                param=f"{field}[{index}].role",
            )
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except _template_errors() as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InvalidInput(f"{field} cannot be rendered by the base model's chat template: {reason}", param=field) from None


def _template_errors() -> tuple[type[Exception], ...]:
    from jinja2 import TemplateError

    # raise_exception() in a template raises TemplateError; templates that index or compare what a
    # message lacks raise the others.
    return TemplateError, TypeError, ValueError, KeyError, IndexError
