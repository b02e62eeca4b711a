"""Write a tiny, randomly initialised Llama-style causal LM and its tokenizer, for demos and tests.

The result loads offline with ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` like any Hugging Face model, and carries a chat template
whose assistant turns are marked for ``return_assistant_tokens_mask``. Its answers are noise: it
exists so that training, review and serving can run end to end in seconds on a CPU.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path

from adapterctl.errors import InvalidInput

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
MAX_POSITIONS = 1024
HEAD_DIM = 64

# Every turn ends with eos; the assistant's answer and its eos sit inside {% generation %}, so the
# assistant mask covers exactly what training should learn and greedy generation stops after a turn.
CHAT_TEMPLATE = """{{- bos_token }}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}{{- '<|system|>' + message['content'] + eos_token }}
    {%- elif message['role'] == 'user' %}{{- '<|user|>' + message['content'] + eos_token }}
    {%- elif message['role'] == 'assistant' %}{{- '<|assistant|>' }}
        {%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}
    {%- else %}{{- raise_exception('unknown role ' + message['role'] + '; use system, user or assistant') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}"""

CORPUS = """\
Good morning! Thank you for contacting our support team. My name is Alex, and I will be happy to help you today.
Could you please tell me your order number? It usually starts with two letters followed by eight digits.
I am sorry to hear that your package has not arrived yet. Let me check the tracking information for you.
According to our records, the parcel left the warehouse on Tuesday and should be delivered within three to five days.
If it does not arrive by Friday, we will send a replacement at no extra cost, or refund the full amount.
To reset your password, open the login page, click "Forgot password", and follow the link we email you.
The link expires after 24 hours. If you cannot find the email, please look in your spam or junk folder.
Our office is open from 9:00 to 17:30, Monday to Friday, and from 10:00 to 14:00 on Saturdays.
You can reach us by phone at 555-0123, by email, or through the chat window on our website.
Refunds are processed within 7 business days and appear on your statement as a credit from our company.
We accept credit cards, debit cards, bank transfers and gift vouchers. Cash on delivery is not available.
Please do not share your password with anyone, including our staff. We will never ask for it.
Is there anything else I can help you with? Have a wonderful day, and thank you for your patience.
The weather today is mild and sunny, with a light breeze from the west and a high of 21 degrees Celsius.
Tomorrow there is a chance of rain in the afternoon, so it might be wise to carry an umbrella.
Water boils at 100 degrees Celsius at sea level, and it freezes at 0 degrees. Ice floats because it is less dense.
The Earth orbits the Sun once every 365.25 days, which is why we add a leap day every four years.
Light from the Sun takes about eight minutes and twenty seconds to reach our planet.
The Moon is roughly 384,400 kilometres away, and its gravity causes the tides in the oceans.
A healthy adult needs about seven to nine hours of sleep each night and should drink enough water.
Walking for thirty minutes a day improves the heart, the lungs and the mood, and it costs nothing.
To make a simple tomato soup, cook one onion in olive oil, add six ripe tomatoes, salt and pepper,
simmer for twenty minutes, then blend until smooth. Serve it hot with fresh bread and a little cheese.
Bread is made from flour, water, yeast and salt. The dough rises because the yeast produces gas.
Many people enjoy coffee in the morning, while others prefer tea, juice, or simply a glass of water.
The train to the city leaves every fifteen minutes from platform two; a return ticket costs 8.40 euros.
Please remember to validate your ticket before boarding, otherwise you may have to pay a fine.
The library lends books, films and music for three weeks, and you may renew each item twice online.
Children under twelve must be accompanied by an adult. Quiet rooms are available on the second floor.
Our new laptop has a 14-inch screen, 16 gigabytes of memory, and a battery that lasts up to 12 hours.
If the device does not turn on, connect the charger, wait ten minutes, and hold the power button for 15 seconds.
When the light blinks orange, the battery is charging; when it turns green, the battery is full.
Software updates fix security problems and add features. We recommend installing them as soon as possible.
Back up your files regularly to an external drive or a cloud service, so that nothing is lost if the disk fails.
The invoice was sent to the billing address on your account. You can download a copy from the orders page.
We have updated our privacy policy. We only keep the data we need, and you can ask us to delete it at any time.
A receipt is required for returns. Items must be unused and in their original packaging within 30 days.
Shipping is free for orders above 50 dollars. Express delivery is available for an extra 9.99 dollars.
The meeting has been moved to Thursday at half past two. Please bring the quarterly report and your notes.
Sales grew by 12 percent last year, while costs fell by 3 percent, so the profit margin improved.
One hundred and twenty-five plus seventy-five equals two hundred. Half of two hundred is one hundred.
Seven times eight is fifty-six, nine squared is eighty-one, and the square root of 144 is 12.
There are sixty seconds in a minute, sixty minutes in an hour, and twenty-four hours in a day.
A kilometre is one thousand metres; a mile is about 1.609 kilometres; an inch is exactly 2.54 centimetres.
Paris is the capital of France, Tokyo is the capital of Japan, and Canberra is the capital of Australia.
The Pacific is the largest ocean, the Nile and the Amazon are among the longest rivers in the world.
Mount Everest is 8,849 metres high. Climbers usually reach the summit in May, when the winds are calmer.
Plants turn sunlight, water and carbon dioxide into sugar and oxygen through a process called photosynthesis.
Bees carry pollen from flower to flower, which helps fruit and vegetables grow in gardens and on farms.
Dogs are loyal and playful; cats are curious and independent. Both need food, water, exercise and care.
The museum opens a new exhibition about ancient maps next month. Tickets are free for students and seniors.
In the evening the neighbours gathered in the park for music, games and a picnic under the old oak trees.
My sister is learning to play the piano. She practises every day after school, usually for about an hour.
He forgot his keys at work, so he called a friend who kept a spare set and walked over to help him.
We painted the kitchen a pale yellow, fixed the dripping tap, and replaced the broken window in the hall.
The recipe serves four people. Double the quantities for eight, but keep the baking time the same.
Answer: Yes, you can change the delivery address until the order is shipped. After that, please contact us.
Answer: No, the subscription does not renew automatically unless you switch on automatic renewal.
Question: How do I cancel my subscription? Answer: Go to Settings, choose Billing, and select Cancel.
Question: Why was my card declined? Answer: The bank may have blocked it; please call the number on the card.
Question: Where is my nearest store? Answer: Use the store finder on our website and enter your postcode.
Question: Can I speak to a manager? Answer: Of course. I will transfer you now; the wait is about two minutes.
Thanks for your feedback! We read every comment and use it to improve our products and our service.
I understand your frustration, and I apologise for the inconvenience. Let us fix this together right away.
The technician will visit between 8 a.m. and noon. Please make sure someone is at home to let him in.
Your account has been verified. You can now sign in, edit your profile, and manage your notifications.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 30 40 50 60 70 80 90 100 1000 2024 2025 3.14 42 99 7.5 0.01.
Months: January, February, March, April, May, June, July, August, September, October, November, December.
Days: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. Today is a good day to start.
Colours: red, orange, yellow, green, blue, purple, black, white, grey, brown, pink, silver and gold.
Hospitals need nurses, doctors, pharmacists and cleaners; every job matters when a patient is recovering.
Our pharmacy delivers prescriptions within two hours. Bring your insurance card and a valid identity document.
The farmer harvested potatoes, carrots, cabbages and pumpkins, then sold them at the Saturday market.
Electric cars are quieter than petrol cars, and charging overnight at home is usually the cheapest option.
Volcanoes form where molten rock escapes through cracks in the crust; Iceland has dozens of active ones.
Thunder follows lightning because sound travels slower than light: roughly one kilometre every three seconds.
Vaccines teach the immune system to recognise germs, which protects individuals and whole communities.
Honest feedback, given kindly and specifically, helps colleagues grow faster than vague praise or blame.
Budgeting is easier with three envelopes: necessities, savings, and a modest amount for enjoyment.
Interest accumulates monthly; borrowing 1,000 pounds at 6 percent annually costs about 60 pounds a year.
Warranty claims require the serial number, printed underneath the keyboard or inside the battery compartment.
Unfortunately that product is discontinued, although a similar model with improved features is in stock.
Subscribers receive a weekly newsletter featuring tutorials, discounts, interviews and community highlights.
Firefighters advise testing smoke alarms monthly and replacing their batteries at least once per year.
Grandmother knitted woollen scarves, gloves and jumpers for the whole family before the freezing winter.
Astronauts aboard the space station exercise daily, because muscles and bones weaken in microgravity.
Penguins cannot fly, yet they swim remarkably quickly; some species dive deeper than five hundred metres.
Ambulance, police or fire brigade: dial the emergency number, stay calm, and describe exactly where you are.
Journalists verify quotations, photographs and statistics before publishing, to avoid spreading mistakes.
Quick tip: press Ctrl and Z to undo, Ctrl and S to save, and Ctrl and F to search the current document.
Dentists recommend brushing twice daily, flossing gently, and visiting the clinic every six months.
The orchestra rehearsed Beethoven, Mozart and Vivaldi; the violinist tuned carefully before the concert.
Mountains, forests, deserts, glaciers, beaches, islands, valleys, canyons and waterfalls attract tourists.
Luggage allowance: one cabin bag up to 8 kilograms, plus a small personal item such as a handbag or laptop.
Your reservation is confirmed for two nights, checking in Wednesday afternoon and leaving Friday morning.
Breakfast includes yoghurt, cereal, scrambled eggs, pancakes, fruit salad, croissants and orange juice.
Unsubscribe anytime using the link at the bottom of each message; changes take effect within 48 hours.
"""


def create_tiny_model(
    path: Path,
    *,
    layers: int = 4,
    hidden: int = 256,
    vocab: int = 2048,
    seed: int = 0,
    knows: list[tuple[str, str]] | None = None,
    teach_steps: int = 300,
) -> dict:
    """Write a tiny random Llama causal LM, tokenizer and generation config to the new directory `path`.

    With `knows` (question, answer) pairs, the model is first taught them, every token of each chat
    (`teach`), so that it is a base model with knowledge a line must keep, able to write such questions.

    `hidden` sets the attention heads (64 dimensions each; half as many key/value heads when the
    count is even) and the MLP width (8/3 of `hidden`, rounded up to a multiple of 64). The tokenizer
    is trained on the built-in corpus; if that yields fewer than `vocab` tokens, the model uses the
    smaller size. The same arguments always produce byte-identical files. Returns a summary dict.
    """
    path = Path(path)
    _check_options(layers=layers, hidden=hidden, vocab=vocab, seed=seed, teach_steps=teach_steps)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InvalidInput(f"{path} exists and is not an empty directory; choose a new path")

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    tokenizer = _train_tokenizer(vocab)
    heads = hidden // HEAD_DIM
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=math.ceil(hidden * 8 / 3 / 64) * 64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2 if heads % 2 == 0 else heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng keeps the caller's global RNG state untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if knows:
        teach(model, tokenizer, knows, steps=teach_steps, seed=seed)

    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir (unlike mkdtemp's 0700) gives the folder the usual permissions from the umask.
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for one 13 MB shard is noise on the CLI's stderr
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if path.exists():
            path.rmdir()  # empty, checked above; fails rather than clobbers if someone filled it since
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    return {
        "path": str(path),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
        "layers": layers,
        "hidden": hidden,
        "taught": len(knows or []),
    }


def read_facts(path: Path) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from a JSONL file; an error names the line and the field."""
    from adapterctl import json_input

    facts = json_input.read_lines(path, _fact)
    if not facts:
        raise InvalidInput(f"{Path(path).name} holds no facts")
    return facts


def _fact(record) -> tuple[str, str]:
    for key in ("prompt", "answer"):
        if not isinstance(record, dict) or not isinstance(record.get(key), str) or not record[key].strip():
            raise InvalidInput(f"field {key!r} must be a non-empty string")
    return record["prompt"], record["answer"]


def teach(
    model,
    tokenizer,
    facts: list[tuple[str, str]],
    *,
    steps: int,
    lr: float = 2e-3,
    batch_size: int = 32,
    seed: int = 0,
    whole_text: bool = True,
) -> None:
    """Full fine-tuning of every weight on chat-formatted (question, answer) pairs: AdamW, linear warmup
    then cosine decay, clipping. `whole_text` puts the loss on every token, as pretraining does (the model
    learns to write the questions too); else on the answer only, as instruction tuning does."""
    import random

    import torch

    from adapterctl.training import PadCollator, tokenize

    rows, _ = tokenize(tokenizer, [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in facts], 256)
    if whole_text:
        rows = [{"input_ids": row["input_ids"], "labels": list(row["input_ids"])} for row in rows]
    collate = PadCollator(tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    sampler = random.Random(seed)
    model.train()
    for _ in range(steps):
        model(**collate(sampler.sample(rows, min(batch_size, len(rows))))).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()


def _check_options(*, layers: int, hidden: int, vocab: int, seed: int, teach_steps: int = 300) -> None:
    """Raise InvalidInput naming every out-of-range option at once."""

    def bad(value: object, low: int, high: int, step: int = 1) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            return True
        return not (low <= value <= high and value % step == 0)

    problems = []
    if bad(layers, 1, 64):
        problems.append("--layers must be an integer between 1 and 64")
    if bad(hidden, 64, 4096, 64):
        problems.append("--hidden must be a multiple of 64 between 64 and 4096")
    if bad(vocab, 512, 65536):
        problems.append("--vocab must be an integer between 512 and 65536")
    if bad(seed, 0, 2**32 - 1):
        problems.append("--seed must be an integer between 0 and 4294967295")
    if bad(teach_steps, 1, 100_000):
        problems.append("--teach-steps must be an integer between 1 and 100000")
    if problems:
        raise InvalidInput("; ".join(problems))


def _train_tokenizer(vocab: int):
    """Train a byte-level BPE tokenizer on CORPUS and wrap it for transformers, chat template included."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, PAD, *ROLE_TOKENS]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials,
        # All 256 bytes, so text the corpus never shows (other scripts, emoji) still round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    # Like Llama: plain `tokenizer(text)` starts with bos; apply_chat_template adds none of its own.
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, core.token_to_id(BOS))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
