"""How much of a decode step is transformers' module overhead? A hand-written Llama decode step (the same weights,
preallocated KV, SDPA, greedy argmax) vs the engine's step at batch B, interleaved rounds.

    python -m paratune.bench.handwritten_check 1   # and 8
"""
import sys, time, statistics
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
torch.set_num_threads(2)
from paratune.models import load_backbone
from paratune.engine import Engine
from paratune.bench.profile_step import decode_seconds_per_step

B = int(sys.argv[1]); STEPS = 24
b = load_backbone(); m = b.model.eval(); cfg = m.config
nh, nkv, hd, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads, cfg.hidden_size
eps = cfg.rms_norm_eps
W = [dict(q=l.self_attn.q_proj.weight, k=l.self_attn.k_proj.weight, v=l.self_attn.v_proj.weight, o=l.self_attn.o_proj.weight,
          g=l.mlp.gate_proj.weight, u=l.mlp.up_proj.weight, dn=l.mlp.down_proj.weight,
          n1=l.input_layernorm.weight, n2=l.post_attention_layernorm.weight) for l in m.model.layers]
S = 256
K = [torch.randn(B, nkv, S, hd) * 0.1 for _ in W]; V = [torch.randn(B, nkv, S, hd) * 0.1 for _ in W]
def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
@torch.inference_mode()
def hand_step(tok, p):
    x = m.model.embed_tokens(tok)
    pos = torch.full((B, 1), p)
    cos, sin = m.model.rotary_emb(x, pos)
    for i, w in enumerate(W):
        h = rms(x, w["n1"])
        q = F.linear(h, w["q"]).view(B, 1, nh, hd).transpose(1, 2)
        k = F.linear(h, w["k"]).view(B, 1, nkv, hd).transpose(1, 2)
        v = F.linear(h, w["v"]).view(B, 1, nkv, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        K[i][:, :, p] = k[:, :, 0]; V[i][:, :, p] = v[:, :, 0]
        a = F.scaled_dot_product_attention(q, K[i][:, :, :p + 1], V[i][:, :, :p + 1], enable_gqa=True)
        x = x + F.linear(a.transpose(1, 2).reshape(B, 1, d), w["o"])
        h = rms(x, w["n2"])
        x = x + F.linear(F.silu(F.linear(h, w["g"])) * F.linear(h, w["u"]), w["dn"])
    return m.lm_head(rms(x, m.model.norm.weight)[:, -1]).argmax(-1)

engine = Engine(m, b.tokenizer, max_batch=B, max_seq_len=S)
g = torch.Generator().manual_seed(0)
def engine_round():
    return decode_seconds_per_step(engine, [None] * B, STEPS, g)
def hand_round():
    tok = torch.randint(100, 40000, (B, 1))
    hand_step(tok, 64)
    t = time.perf_counter()
    for s in range(STEPS):
        tok = hand_step(tok, 65 + s)[:, None]
    return (time.perf_counter() - t) / STEPS
res = {"engine": [], "hand": []}
engine_round(); hand_round()
for r in range(4):
    res["engine"].append(engine_round()); res["hand"].append(hand_round())
e, h = statistics.median(res["engine"]), statistics.median(res["hand"])
print(f"B={B} engine {1000*e:.1f} ms/step ({B/e:.1f} tok/s)  hand-written {1000*h:.1f} ms/step ({B/h:.1f} tok/s)  engine/hand time {e/h:.2f}")
