"""Tokenizers trained on the user's data (BPE for text, EMA VQ for images/video) and their saved format.

`vlac tokenizer train SPEC --modality NAME [-o DIR]` reads the values of modality NAME from every
mixture component that carries it (its source, or its built-in generator), fits the tokenizer and
writes DIR (default: tokenizers/NAME beside the spec). Point the spec at it with
`modalities.NAME.path: DIR`; the runtime (and so `vlac prepare` and training) then loads it instead
of fitting one in-process.

Folder format (format_version 1):

- `vlac_tokenizer.json`: the manifest, JSON with sorted keys: `format_version`, `kind` (text,
  image or video), `modality` (the name it was trained for), and a `report` of the training run
  (values per component, skipped records by reason; for VQ also steps, images, reconstruction_mse,
  usage, perplexity, entropy, reseeded).
  - text adds `vocab_size` (entries of the trained BPE; at most the spec's vocab_size);
  - image/video add `codebook_size`, `codebook_dim`, `patch_size`, `image_size`, `channels` (each
    checked against the spec on loading: every mismatch is named), `hidden` (encoder width) and
    `decay` (of the EMA).
- text: `tokenizer.json`, a Hugging Face `tokenizers` file (byte-level BPE). Any other
  tokenizer.json loads too: `path` may name the file itself or a folder holding it.
- image/video: `model.safetensors`, the state of vlac.data.tokenizers.ema_vq.EMAVQTokenizer
  (encoder, decoder, codebook and its EMA statistics).
"""
