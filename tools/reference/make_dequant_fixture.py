#!/usr/bin/env python3
"""llama.cpp's own dequantization of seeded random blocks of every type collm-gguf decodes.

Writes fixtures/dequant_llamacpp.json: per type, the raw block bytes (hex) and the f32 bit
patterns ggml's C `to_float` (ggml_get_type_traits(type)->to_float, from the libggml-base
that llama-cpp-python ships) produces for them; gguf-py's numpy dequantization must agree.
Scale fields are set to finite f16 values so that every value is a number.

    $COLLM_CACHE/ref-venv/bin/python tools/reference/make_dequant_fixture.py
"""

import ctypes
import glob
import json
import os

import gguf
import llama_cpp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "dequant_llamacpp.json")

# type: (values per block, bytes per block, byte offsets of f16 scale fields)
TYPES = {
    "Q4_0": (32, 18, [0]),
    "Q4_1": (32, 20, [0, 2]),
    "Q5_0": (32, 22, [0]),
    "Q5_1": (32, 24, [0, 2]),
    "Q8_0": (32, 34, [0]),
    "IQ4_NL": (32, 18, [0]),
    "Q2_K": (256, 84, [80, 82]),
    "Q3_K": (256, 110, [108]),
    "Q4_K": (256, 144, [0, 2]),
    "Q5_K": (256, 176, [0, 2]),
    "Q6_K": (256, 210, [208]),
    "BF16": (1, 2, []),
}
VALUES = 512


class TypeTraits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


def ggml_base():
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    (path,) = glob.glob(os.path.join(libdir, "libggml-base.so*"))[:1]
    lib = ctypes.CDLL(path)
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return lib


TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


def main():
    lib = ggml_base()
    rng = np.random.default_rng(20240607)
    doc = {"generator": f"ggml to_float from llama-cpp-python {llama_cpp.__version__}",
           "values": VALUES, "types": {}}
    for name, (per_block, size, scale_at) in TYPES.items():
        qtype = gguf.GGMLQuantizationType[name]
        traits = lib.ggml_get_type_traits(int(qtype)).contents
        assert traits.type_name.decode().lower() == name.lower(), traits.type_name
        assert (traits.blck_size, traits.type_size) == (per_block, size), name
        blocks = VALUES // per_block
        raw = rng.integers(0, 256, size=(blocks, size), dtype=np.uint8)
        for at in scale_at:
            scale = rng.uniform(0.002, 0.05, size=blocks).astype(np.float16)
            raw[:, at:at + 2] = scale.view(np.uint8).reshape(blocks, 2)
        if name == "BF16":
            raw = rng.normal(0, 1, size=VALUES).astype(np.float32).view(np.uint32)
            raw = (raw >> 16).astype(np.uint16).view(np.uint8).reshape(blocks, size)
        data = np.ascontiguousarray(raw).tobytes()
        out = (ctypes.c_float * VALUES)()
        TO_FLOAT(traits.to_float)(ctypes.c_char_p(data), out, VALUES)
        values = np.frombuffer(out, dtype=np.float32).copy()
        py = gguf.quants.dequantize(np.frombuffer(data, dtype=np.uint8), qtype).reshape(-1)
        assert np.allclose(values, py, rtol=1e-6, atol=1e-7), f"{name}: C and gguf-py disagree"
        doc["types"][name] = {
            "bytes": data.hex(),
            "f32_bits": [int(b) for b in values.view(np.uint32)],
        }
        print(f"{name}: {blocks} blocks, values in [{values.min():.4f}, {values.max():.4f}]")
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
