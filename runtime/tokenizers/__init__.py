"""Tokenizers of every modality: text (byte / BPE), VQ images, residual-VQ audio codes, action bins."""

from .actions import ActionTokenizer
from .audio import AudioCodecTokenizer
from .text import BPETokenizer, ByteTokenizer, text_tokenizer
from .vq import VectorQuantizer, VQTokenizer, train_vq

__all__ = ["ActionTokenizer", "AudioCodecTokenizer", "BPETokenizer", "ByteTokenizer", "VQTokenizer",
           "VectorQuantizer", "text_tokenizer", "train_vq"]
