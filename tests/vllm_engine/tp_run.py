"""Run by test_tensor_parallel: steered greedy tokens from a vLLM engine with tensor_parallel_size=N, as JSON.

A script of its own because one process holds one vLLM distributed setup (the session engine is TP=1).
Usage: python tp_run.py VECTOR.safetensors TP
"""

import json
import os
import sys

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

if __name__ == "__main__":
    import steerlab
    from steerlab.generation import GenerationConfig, encode_prompts
    from steerlab.interop.vllm.engine import VLLMEngine
    from steerlab.steering import SteeringSpec

    lm = steerlab.load_model()
    vector = steerlab.SteeringVector.load(sys.argv[1])
    engine = VLLMEngine(
        lm, tensor_parallel_size=int(sys.argv[2]), enforce_eager=True
    )  # eager: 3 ranks compiling on 2 cores would take minutes
    rows = encode_prompts(lm, ["Tell me about your weekend.", "Describe the new cafe on Main Street."])
    spec = SteeringSpec(vector, 4.0, [10, 15], "all")
    outs = engine.run(rows, [engine.items(spec, 1)[0], None], config=GenerationConfig(max_new_tokens=32))
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
    engine.close()
