"""The Ray Serve backend: N replicas of the llama backend behind one `InferenceEngine`.

engine.py (RayEngine, in the front end's process) ──Serve handles──> replica.py (EngineReplica: a
LlamaEngine per replica). A request's adapter set is its multiplex key, so Serve routes it to a replica
that already holds that set (routing.py adds calls aimed at one replica: abort, stats, adapter sync);
catalogue.py is the cluster-wide adapter catalogue (name → source and content hash) every replica
honours. Importing this package loads neither Ray nor llama.cpp; opening a RayEngine loads Ray.
"""

from engine.ray.options import RayOptions

__all__ = ["RayOptions"]
