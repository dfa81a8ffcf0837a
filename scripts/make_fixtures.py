#!/usr/bin/env python3
"""Make the tiny random-weight checkpoints and Hugging Face reference outputs the parity tests use.

Each fixture folder under fixtures/ is a standard HF checkpoint (config.json, model.safetensors,
tokenizer files where the family has them) plus reference.safetensors holding the exact inputs
fed to transformers and the outputs it produced (float32, CPU, eval mode).

Regenerate (needs torch + transformers from PyPI; see scripts/setup_pyref.sh):
    scripts/setup_pyref.sh && ~/.cache/ipfs-accelerate/pyref/bin/python scripts/make_fixtures.py
Also writes fixtures/minilm/reference.json from the real all-MiniLM-L6-v2 checkpoint fetched by
scripts/fetch_checkpoints.sh, with sentence-transformers.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
SEED = 1234

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A benchmark measures what a machine really does.",
]


def mark_random(out, **extra):
    """Declares the folder's weights randomly initialised; the loader records weights = random."""
    (out / "weights_provenance.json").write_text(json.dumps(
        {"weights": "random", "generator": "scripts/make_fixtures.py", "seed": SEED, **extra}, indent=2))


def meta(extra):
    m = {
        "generator": "scripts/make_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "seed": SEED,
    }
    m.update(extra)
    return m


def bert_tiny():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = FIX / "bert-tiny"
    out.mkdir(parents=True, exist_ok=True)
    # A real WordPiece tokenizer over a small vocabulary: whole words of the test sentences,
    # single characters and their ## continuations, so any English text tokenizes.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'-()"))
    words = sorted({w.strip(".,").lower() for s in SENTENCES for w in s.split()} - {""})
    vocab = specials + chars + ["##" + c for c in chars] + words + ["the", "a", "of", "and"]
    vocab = list(dict.fromkeys(vocab))
    wp = models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")
    tok = Tokenizer(wp)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )
    fast.save_pretrained(out)

    torch.manual_seed(SEED)
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)

    enc = fast(SENTENCES, padding=True, return_token_type_ids=True, return_tensors="pt")
    # Give the second sequence type-1 tokens too, so token-type embeddings are exercised.
    token_type_ids = enc["token_type_ids"].clone()
    token_type_ids[1, 3:6] = 1
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                  token_type_ids=token_type_ids).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    save_file({
        "input_ids": enc["input_ids"].to(torch.int64).contiguous(),
        "attention_mask": enc["attention_mask"].to(torch.int64).contiguous(),
        "token_type_ids": token_type_ids.to(torch.int64).contiguous(),
        "last_hidden_state": h.contiguous(),
        "mean_pooled": pooled.contiguous(),
    }, str(out / "reference.safetensors"))
    (out / "reference_meta.json").write_text(json.dumps(meta({"sentences": SENTENCES}), indent=2))


def vit_tiny():
    from transformers import ViTConfig, ViTForImageClassification

    out = FIX / "vit-tiny"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    cfg = ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=5,
        id2label={i: f"label_{i}" for i in range(5)}, label2id={f"label_{i}": i for i in range(5)},
    )
    model = ViTForImageClassification(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    g = torch.Generator().manual_seed(SEED)
    pixel_values = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    save_file({"pixel_values": pixel_values.contiguous(), "logits": logits.contiguous()},
              str(out / "reference.safetensors"))
    (out / "reference_meta.json").write_text(json.dumps(meta({}), indent=2))


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Benchmarks measure what a machine really does with a model.",
    "Once upon a time there was a small language model that ran on every computer.",
    "Hardware differs in memory bandwidth, vector units and caches.",
    "Translate English to German: the house is wonderful.",
] * 4
PROMPTS = ["Once upon a time", "The quick brown fox jumps over"]
NEW_TOKENS = 32


def bpe_tokenizer(out):
    """A real byte-level BPE tokenizer trained on a tiny corpus, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


def decoder_fixture(name, make_model):
    """Causal LM fixture: full logits for the prompts (right-padded batch, masked) and the
    32 greedy tokens transformers' generate(do_sample=False) produces for each prompt alone."""
    out = FIX / name
    out.mkdir(parents=True, exist_ok=True)
    tok = bpe_tokenizer(out)
    torch.manual_seed(SEED)
    model = make_model(len(tok)).eval()
    model.generation_config.eos_token_id = None  # exactly NEW_TOKENS tokens, no early stop
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    tensors = {}
    greedy = []
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            gen = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        tensors[f"prompt{i}_input_ids"] = ids.to(torch.int64).contiguous()
        tensors[f"prompt{i}_logits"] = logits.contiguous()
        tensors[f"prompt{i}_greedy"] = gen[0, ids.shape[1]:].to(torch.int64).contiguous()
        greedy.append(tok.decode(gen[0, ids.shape[1]:]))
    save_file(tensors, str(out / "reference.safetensors"))
    (out / "reference_meta.json").write_text(json.dumps(meta({
        "prompts": PROMPTS, "new_tokens": NEW_TOKENS, "greedy_text": greedy}), indent=2))


def text_fixtures():
    from transformers import (LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    decoder_fixture("llama-tiny", lambda v: LlamaForCausalLM(LlamaConfig(vocab_size=v, **common)))
    decoder_fixture("qwen2-tiny", lambda v: Qwen2ForCausalLM(Qwen2Config(vocab_size=v, **common)))
    decoder_fixture("qwen3-tiny", lambda v: Qwen3ForCausalLM(Qwen3Config(vocab_size=v, head_dim=8, **common)))
    decoder_fixture("opt-tiny", lambda v: OPTForCausalLM(OPTConfig(
        vocab_size=v, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, word_embed_proj_dim=32, bos_token_id=1, eos_token_id=2,
        pad_token_id=0)))
    t5_fixture()


def t5_fixture():
    from transformers import T5Config, T5ForConditionalGeneration

    out = FIX / "t5-tiny"
    out.mkdir(parents=True, exist_ok=True)
    tok = bpe_tokenizer(out)
    torch.manual_seed(SEED)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                   num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                   relative_attention_max_distance=20, feed_forward_proj="relu",
                   pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = None
    model.save_pretrained(out, safe_serialization=True)
    mark_random(out)
    tensors = {}
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt + "</s>", return_tensors="pt")["input_ids"]
        dec = torch.tensor([[0] + ids[0, :5].tolist()])
        with torch.no_grad():
            logits = model(input_ids=ids, decoder_input_ids=dec).logits
            gen = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        tensors[f"prompt{i}_input_ids"] = ids.to(torch.int64).contiguous()
        tensors[f"prompt{i}_decoder_input_ids"] = dec.to(torch.int64).contiguous()
        tensors[f"prompt{i}_logits"] = logits.contiguous()
        # generate() output starts with the decoder start token
        tensors[f"prompt{i}_greedy"] = gen[0, 1:].to(torch.int64).contiguous()
    save_file(tensors, str(out / "reference.safetensors"))
    (out / "reference_meta.json").write_text(json.dumps(meta({"prompts": PROMPTS, "new_tokens": NEW_TOKENS}), indent=2))


MINILM_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The new movie is so great.",
    "A cat is playing the piano.",
    "Stock markets fell sharply on Monday.",
    "How do I reset my password?",
    "I forgot my password and need to change it.",
    "The weather in Paris is sunny today.",
    "Quantum computers use qubits instead of bits.",
]

# Inputs of the classes a user meets beyond short English sentences (issue 13): longer than the
# checkpoint tokenizer.json's own truncation (128) but within sentence-transformers'
# max_seq_length (256); longer than max_seq_length (truncated); non-ASCII scripts, accents and
# emoji; and the empty string.
_PASSAGE = (
    "Benchmarks are only useful when every number can be traced back to the command that produced it. "
    "The river flooded the valley after three days of heavy rain, and the farmers moved their cattle uphill. "
    "A good espresso needs finely ground beans, water just below boiling, and about nine bars of pressure. "
    "In 1969 two astronauts walked on the Moon while a third orbited above them in the command module. "
    "Compilers translate source code into machine instructions, applying optimisations along the way. "
    "The orchestra rehearsed the symphony for weeks before the premiere at the concert hall downtown. "
    "Migrating birds navigate using the Earth's magnetic field, the position of the sun and the stars. "
    "Interest rates rose again this quarter, putting pressure on households with variable mortgages. "
    "The museum's new wing displays sculptures from the Bronze Age alongside modern installations. "
    "Volcanic soil is rich in minerals, which is why vineyards often thrive on the slopes of old volcanoes. "
    "Her marathon time improved by eleven minutes after she changed her training plan and her shoes. "
    "Encryption keys must be rotated regularly and stored separately from the data they protect. "
)
MINILM_EXTRA = [
    _PASSAGE[:900],  # ~170 wordpieces: between the tokenizer's 128 and max_seq_length 256
    _PASSAGE * 2,    # ~440 wordpieces: truncated to max_seq_length
    "Café au lait et crème brûlée: une façade naïve à Zürich.",
    "東京は日本の首都です。",
    "Привет, как у тебя дела сегодня?",
    "Party time 🎉🚀 with emoji and ünïcödé straße.",
    "",
]


def minilm_reference():
    from sentence_transformers import SentenceTransformer

    cache = Path(os.environ.get("IPFS_ACCELERATE_CACHE", Path.home() / ".cache" / "ipfs-accelerate"))
    ckpt = cache / "models" / "sentence-transformers--all-MiniLM-L6-v2"
    if not (ckpt / "config.json").exists():
        sys.exit(f"{ckpt} missing: run scripts/fetch_checkpoints.sh first")
    st = SentenceTransformer(str(ckpt), device="cpu")
    sentences = MINILM_SENTENCES + MINILM_EXTRA
    # One call, as a user would make it: sentence-transformers sorts by length and pads each
    # batch to its longest member, so this is the batched mixed-length path.
    emb = st.encode(sentences, convert_to_numpy=True)
    tok = st.tokenizer
    lengths = [len(tok(s, truncation=True, max_length=st.max_seq_length)["input_ids"]) for s in sentences]
    out = FIX / "minilm"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference.json").write_text(json.dumps(meta({
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "pipeline": "SentenceTransformer(folder).encode(sentences) (modules.json: Transformer, Pooling(mean), Normalize)",
        "sentence_transformers": __import__("sentence_transformers").__version__,
        "max_seq_length": st.max_seq_length,
        "sentences": sentences,
        # tokens each sentence has after sentence-transformers' truncation (special tokens included)
        "token_counts": lengths,
        # pairs (i, j) that are paraphrases; every other pair among the first ten is unrelated
        "paraphrase_pairs": [[0, 1], [2, 3], [6, 7]],
        "embeddings": [[round(float(x), 7) for x in row] for row in emb],
    })))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if "--only-minilm" in sys.argv:
        minilm_reference()
        sys.exit(0)
    bert_tiny()
    vit_tiny()
    text_fixtures()
    if "--skip-minilm" not in sys.argv:
        minilm_reference()
    print("fixtures written to", FIX)
