"""The codec learner (domains as tasks) and the ``domains`` task builder.

Task 0 trains (or loads) the source codec on the first domain (``natural`` by default); each
later task adapts it to a new domain with one strategy:

- ``naive``: fine-tune everything (one codec; old bitstreams no longer decode: new codec id).
- ``selective``: GDN + entropy model + per-channel affines only (DANICE, about 5%).
- ``cawf``: frozen source + K custom filters per layer and an entropy model per domain; domain
  ``t`` is encoded with branch ``t`` (domain 0 with the source codec).
- ``adapters``: frozen source + ``K + 1`` decoder adapters (the source one included) and a gate
  (Presta et al., :mod:`codec.strategies.adapters`), loss ``gamma * mse_scale * MSE + CE``
  (``gamma = 0.5``, ``mse_scale = 1``: the MSE of [0, 1] images, as the paper's eq. 3 is written).
  Task 1 trains the gate, the source adapter and adapter 1; task ``t >= 2`` the gate and adapter
  ``t`` (earlier adapters stay frozen: their files decode bit-exactly). With ``replay_source``
  (default) source-domain crops (label 0) are mixed into every batch (the source data, natural
  images, being public). The gate is trained over every domain seen so far from
  ``gate_memory``: ``latents`` (default; a bounded per-domain store of latents ``y`` of the
  frozen encoder, collected at the end of each task, run through the gate only, as many per
  earlier domain as the batch has current-domain items), ``images`` (a bounded per-domain store
  of crops replayed like the source crops: gate and MSE), or ``none`` (the gate sees only
  ``{0, t}``: it forgets earlier targets; the plain task-incremental variant). The memory is
  part of the learner state (checkpoints, resume). ``tasks.joint_adapt`` gives Presta et al.'s
  own protocol: task 1 trains all adapters and the gate on all domains at once.

Evaluation of task ``j`` compresses and decompresses its eval images for real: ``bpp`` from the
file bytes (header included), ``bpp_est`` (entropy estimate), ``psnr``, ``ms_ssim``, ``mse``
(8-bit) and ``rd = bpp + lambda * mse`` (the training objective in 8-bit units; the primary
metric, lower is better).

The learner is registered with the shared driver (``incdet.engine``). Strategies are :class:`codec.registry.Strategy` objects looked
up by name in :data:`codec.registry.STRATEGIES`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from compressai.entropy_models import EntropyBottleneck
from torch.utils.data import ConcatDataset, Dataset

from codec import data as cdata
from codec.metrics import evaluate_codec
from codec.model import load_codec, load_state_into, pad_to_multiple, rd_loss
from codec.registry import CODECS, STRATEGIES, build_codec, get_strategy
from codec.strategies.adapters import AdapterCodec
from codec.strategies.naive import setup_naive
from codec.strategies.selective import trainable_fraction
from incdet import engine
from incdet.engine.learner import Learner
from incdet.engine.task import Task
from incdet.errors import CheckpointError, ConfigError


def _check(section: str, obj, rules: Dict[str, tuple]) -> None:
    """``rules``: field -> (predicate, text of the valid range); a failing value -> ConfigError."""
    for k, (ok, valid) in rules.items():
        v = getattr(obj, k)
        if not ok(v):
            raise ConfigError(f"{section}.{k} = {v!r} is out of range: {valid}")


def _int_at_least(lo, optional=False):
    return lambda v: (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= lo)


def _positive_float(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

log = logging.getLogger(__name__)

GATE_MEMORY = ("latents", "images", "none")

# ---------------------------------------------------------------------------------------
# task builder
# ---------------------------------------------------------------------------------------
@dataclass
class DomainTasksConfig:
    """Options of the ``domains`` task builder."""

    sequence: List[str] = field(default_factory=lambda: ["natural", "cartoon", "sketch"])  #: domains, in order
    eval_sets: Dict[str, Any] = field(default_factory=lambda: {"natural": "kodak"})  #: domain -> eval domain (whole set)
    data_root: Optional[str] = None     #: default ../shared/data
    crop: int = 256                     #: training crop size
    repeats: int = 1                    #: crops per training image per epoch
    eval_every: int = 5                 #: every k-th file (sorted) is held out for eval
    max_train_images: Optional[int] = None
    max_eval_images: Optional[int] = None
    natural_with_camvid: bool = False   #: add CamVid to ``natural`` (off: CamVid is a target domain)
    joint: bool = False                 #: one task training on all domains at once (the joint upper bound)
    joint_adapt: bool = False           #: task 0 the source domain, task 1 all domains at once (labelled:
    #: Presta et al.'s protocol for the adapters); later tasks have no training items: run with
    #: ``tasks.stop_after: 2`` and ``eval.future_tasks: true`` (row 1 then holds every domain)
    seed: int = 0

    def __post_init__(self):
        _check("tasks", self, {
            "crop": (lambda v: _int_at_least(16)(v) and v % 16 == 0, "a multiple of 16, >= 16"),
            "repeats": (_int_at_least(1), "an integer >= 1"),
            "eval_every": (_int_at_least(1), "an integer >= 1 (every k-th file held out for eval)"),
            "max_train_images": (_int_at_least(1, True), "null or an integer >= 1"),
            "max_eval_images": (_int_at_least(1, True), "null or an integer >= 1"),
        })
        if self.joint and self.joint_adapt:
            raise ConfigError("tasks.joint and tasks.joint_adapt exclude each other")


def build_domain_tasks(cfg: DomainTasksConfig = None, **_: Any) -> List[Task]:
    """Tasks for a domain sequence: ``Task(index, name=domain, domain=domain, train_set=RandomCrops,
    eval_set=ImageFiles)``. With ``joint``, task 0 trains on the union of all domains (its
    ``meta["eval_domains"]`` lists them) and the other tasks have no training images."""
    cfg = cfg or DomainTasksConfig()
    if not cfg.sequence:
        raise ConfigError("tasks.sequence: at least one domain is needed")
    tasks = []
    train_parts = []
    for i, dom in enumerate(cfg.sequence):
        files = cdata.domain_files(dom, cfg.data_root, cfg.natural_with_camvid)
        tr, ev = cdata.split_files(files, cfg.eval_every)
        if dom in cfg.eval_sets:
            ev = cdata.domain_files(cfg.eval_sets[dom], cfg.data_root)
        if cfg.max_train_images:
            tr = tr[: cfg.max_train_images]
        train = cdata.RandomCrops(tr, cfg.crop, cfg.repeats, seed=cfg.seed + i, name=dom)
        train_parts.append(train)
        evs = cdata.ImageFiles(ev, cfg.max_eval_images, name=cfg.eval_sets.get(dom, dom))
        tasks.append(Task(index=i, name=dom, domain=dom, train_set=train, eval_set=evs,
                          meta={"domain_id": i, "eval_name": cfg.eval_sets.get(dom, dom),
                                "source_train_set": train_parts[0]}))
    if cfg.joint_adapt:
        if len(tasks) < 2:
            raise ConfigError("tasks.joint_adapt needs at least two domains (the source and a target)")
        tasks[1].train_set = _LabelledMix([(p, i) for i, p in enumerate(train_parts)])
        tasks[1].meta["joint_adapt"] = len(tasks)
        for t in tasks[2:]:
            t.train_set = []
            t.meta["joint_adapt_done"] = True
    if cfg.joint:
        tasks[0].train_set = ConcatDataset(train_parts)
        tasks[0].meta["joint"] = True
        for t in tasks[1:]:
            t.train_set = []
            t.meta["joint"] = True
    return tasks


build_domain_tasks.Config = DomainTasksConfig


# ---------------------------------------------------------------------------------------
# learner
# ---------------------------------------------------------------------------------------
@dataclass
class CodecConfig:
    """Options of the codec learner."""

    strategy: str = "cawf"             #: naive | selective | cawf | adapters
    arch: str = "factorized"           #: source codec kind: factorized | scale-hyperprior | mean-scale-hyperprior
    N: int = 64                        #: channels (DANICE 64; compressai zoo 128 / 192)
    M: Optional[int] = None            #: latent channels (default N)
    scale_levels: int = 64             #: hyperprior kinds: size of the Gaussian scale table (compressai: 64)
    lmbda: float = 0.008               #: R + lmbda * 255^2 * MSE; DANICE: 0.002, 0.008, 0.016, 0.032
    K: int = 16                        #: CAwF custom filters per layer per domain
    policy: str = "soft"               #: adapters: soft | top1 | oracle
    gamma: float = 0.5                 #: adapters: loss gamma * MSE ([0,1] images) + CE
    replay_source: bool = True         #: adapters: source-domain crops (label 0) in every batch
    mse_scale: float = 1.0             #: adapters: loss gamma * mse_scale * MSE([0,1] images) + CE; 1: the paper's
    #: eq. 3 as written; 65025 (255^2): the authors' released code (the distortion then drives the gate)
    adapter_init_std: float = 0.01     #: adapters: Gaussian init std of adapter weights (0: zeros)
    gate_memory: str = "latents"       #: adapters: latents | images | none (what the gate keeps of earlier domains)
    gate_memory_size: int = 64         #: adapters: items kept per domain
    source_checkpoint: Optional[str] = None  #: start from this codec / compressai factorized checkpoint
    train_source: bool = True          #: train on task 0 (False: use source_checkpoint as is)
    eval_msssim: bool = True

    def __post_init__(self):
        from codec.strategies.adapters import POLICIES

        _check("learner", self, {
            "strategy": (lambda v: v in STRATEGIES, f"one of {', '.join(STRATEGIES.names())}"),
            "arch": (lambda v: v in CODECS and getattr(CODECS.get(v), "base_codec", False),
                     f"one of {', '.join(k for k in CODECS.names() if getattr(CODECS.get(k), 'base_codec', False))}"),
            "N": (lambda v: _int_at_least(1)(v) and v <= 4096, "an integer in 1..4096"),
            "M": (lambda v: v is None or (_int_at_least(1)(v) and v <= 4096), "null or an integer in 1..4096"),
            "scale_levels": (lambda v: _int_at_least(2)(v) and v <= 4096, "an integer in 2..4096"),
            "lmbda": (_positive_float, "a finite number > 0"),
            "K": (lambda v: _int_at_least(1)(v) and v <= 4096, "an integer in 1..4096"),
            "policy": (lambda v: v in POLICIES, f"one of {', '.join(POLICIES)}"),
            "gamma": (lambda v: _positive_float(v) or v == 0, "a finite number >= 0"),
            "mse_scale": (_positive_float, "a finite number > 0"),
            "adapter_init_std": (lambda v: _positive_float(v) or v == 0, "a finite number >= 0"),
            "gate_memory": (lambda v: v in GATE_MEMORY, f"one of {', '.join(GATE_MEMORY)}"),
            "gate_memory_size": (lambda v: _int_at_least(1)(v) and v <= 100000, "an integer in 1..100000"),
        })


class CodecLearner(Learner):
    """Learner for domain-incremental codec adaptation; see the module docstring."""

    Config = CodecConfig
    metrics = {"rd": False, "bpp": False, "bpp_est": False, "psnr": True, "ms_ssim": True, "mse": False}
    primary_metric = "rd"
    #: options ``evaluate`` depends on: a run started from another run's source checkpoint
    #: (``tasks.init_from``) copies its rows when these match (the strategy does not matter)
    eval_keys = ("lmbda", "eval_msssim", "policy")

    def __init__(self, config: CodecConfig, device="cpu"):
        if isinstance(config, dict):
            config = CodecConfig(**config)
        if config.strategy not in STRATEGIES:
            raise ConfigError(f"learner.strategy: unknown strategy {config.strategy!r}; known: {', '.join(STRATEGIES.names())}")
        self.config = config
        self.device = torch.device(device)
        self.model = None
        self.teacher = None
        self.task = None
        self._source_set = None
        #: adapters' gate memory: domain id -> latents ``[n, M, h, w]`` (float32) or crops
        #: ``[n, 3, c, c]`` (uint8), see ``gate_memory``
        self.gate_memory: Dict[int, torch.Tensor] = {}
        self._mem_gen = torch.Generator()

    # -- structure ------------------------------------------------------------------------
    @property
    def unwrapped(self):
        m = self.model
        return m.module if isinstance(m, torch.nn.parallel.DistributedDataParallel) else m

    def _source_model(self) -> torch.nn.Module:
        c = self.config
        if c.source_checkpoint:
            m, _ = load_codec(c.source_checkpoint)
            if not getattr(m, "base_codec", False):
                raise ConfigError(f"learner.source_checkpoint {c.source_checkpoint}: not a source codec "
                                  f"(a {m.arch().get('kind')!r} codec, an adapted one)")
            return m
        arch = {"kind": c.arch, "N": c.N, "M": c.M if c.M is not None else c.N}
        if c.arch != "factorized":
            arch["scale_levels"] = c.scale_levels
        return build_codec(arch)

    def domain_id(self, task: Task) -> int:
        return int(task.meta.get("domain_id", task.index)) if task is not None else 0

    def _grow(self, task: Task) -> None:
        """Structural changes for ``task`` (from a freshly built / loaded model)."""
        t = task.index
        c = self.config
        if self.model is None:
            self.model = self._source_model().to(self.device)
        m = self.unwrapped
        if t == 0 or task.meta.get("joint") or task.meta.get("joint_adapt_done"):
            return
        # joint adaptation (tasks.joint_adapt): every domain's adapter in task 1
        last = max(t, int(task.meta.get("joint_adapt", 0)) - 1)
        self.model = get_strategy(c.strategy).grow(m, last, c).to(self.device)

    def _set_trainable(self, task: Task) -> None:
        m = self.unwrapped
        t = task.index
        c = self.config
        if t == 0 or task.meta.get("joint"):
            if getattr(m, "base_codec", False):
                setup_naive(m)
            if not c.train_source and t == 0:
                m.requires_grad_(False)
            return
        if task.meta.get("joint_adapt_done"):
            m.requires_grad_(False)  # trained with every other domain in task 1
            return
        if isinstance(m, AdapterCodec):
            get_strategy(c.strategy).set_trainable(m, t, joint=bool(task.meta.get("joint_adapt")))
        else:
            get_strategy(c.strategy).set_trainable(m, t)
        log.info("task %d (%s): %s, trainable fraction %.4f", t, task.name, c.strategy, trainable_fraction(m))

    def _freeze_quantiles(self) -> None:
        """Quantiles (CDF range) are not trained by gradient: ``end_task`` sets them by
        compressai's bisection (``update(update_quantiles=True)``) for the entropy models
        trained in the task, and never touches frozen ones."""
        for mod in self.unwrapped.modules():
            if isinstance(mod, EntropyBottleneck):
                mod.quantiles.requires_grad_(False)

    def _trained_entropy_models(self) -> List[EntropyBottleneck]:
        return [mod for mod in self.unwrapped.modules() if isinstance(mod, EntropyBottleneck)
                and any(p.requires_grad for p in mod.parameters())]

    def _check_crop(self, task: Task) -> None:
        """Training crops must be multiples of the codec's downsampling (16 factorized, 64
        hyperprior): refused here with the option to change, not deep inside compressai."""
        f = int(getattr(self.unwrapped, "downsampling_factor", 16))
        crop = getattr(task.train_set, "crop", None)
        if isinstance(crop, int) and crop % f:
            raise ConfigError(f"tasks.crop = {crop}: the {self.unwrapped.arch().get('kind')} codec needs crops that are "
                              f"a multiple of {f} (e.g. {max(f, crop // f * f)})")

    def begin_task(self, task: Task) -> None:
        if (task.meta.get("joint_adapt") or task.meta.get("joint_adapt_done")) and self.config.strategy != "adapters":
            raise ConfigError(f"tasks.joint_adapt is the adapters' protocol; learner.strategy is {self.config.strategy!r}")
        self.task = task
        self._mem_gen.manual_seed(7919 * (task.index + 1))
        if task.index == 0:
            self._source_set = task.train_set
        self._grow(task)
        self._check_crop(task)
        self._set_trainable(task)
        self._freeze_quantiles()
        self.model.train()

    def resume_task(self, task: Task) -> None:
        self.task = task
        self._mem_gen.manual_seed(7919 * (task.index + 1))
        self._set_trainable(task)
        self._freeze_quantiles()
        self.model.train()

    def end_task(self, task: Task) -> None:
        m = self.unwrapped
        for eb in self._trained_entropy_models():
            eb.update(force=True, update_quantiles=True)
        m.update(force=False)  # tables of entropy models never computed yet (e.g. an untrained source)
        m.eval()
        if self._uses_memory() and not any(task.meta.get(k) for k in ("joint", "joint_adapt", "joint_adapt_done")):
            self._collect_memory(task)

    def init_from_task_end(self, task: Task) -> None:
        """Starting from another run's task-end checkpoint: collect the gate memory of ``task``
        when that run kept none (weights unchanged)."""
        if self._uses_memory() and self.domain_id(task) not in self.gate_memory and task.train_set is not None:
            self._collect_memory(task)

    # -- the adapters' gate memory ------------------------------------------------------------
    def _uses_memory(self) -> bool:
        return self.config.strategy == "adapters" and self.config.gate_memory != "none"

    @torch.no_grad()
    def _collect_memory(self, task: Task) -> None:
        """Keep ``gate_memory_size`` training items of ``task``'s domain (a seeded choice; the
        torch RNG of the run is left as it was): their latents ``y`` from the frozen encoder
        (``latents``) or the uint8 crops (``images``)."""
        ds = task.train_set
        if ds is None or len(ds) == 0:
            return
        d = self.domain_id(task)
        n = min(self.config.gate_memory_size, len(ds))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(104729 + d)
            idx = torch.randperm(len(ds))[:n].tolist()
            items = [ds[i] for i in idx]
        shapes = {tuple(it.shape) for it in items}
        if len(shapes) != 1:
            raise ConfigError(f"gate memory of domain {task.name!r}: training items of several sizes {sorted(shapes)}; "
                              f"the memory needs crops of one size (tasks.crop)")
        crops = torch.stack(items)
        if self.config.gate_memory == "images":
            self.gate_memory[d] = crops.to(torch.uint8).cpu()
        else:
            m = self.unwrapped
            was = m.training
            m.eval()
            ys = [m.analysis(cdata.collate_crops(list(crops[i:i + 16])).to(self.device), 0).float().cpu()
                  for i in range(0, n, 16)]
            m.train(was)
            self.gate_memory[d] = torch.cat(ys)
        log.info("gate memory: %d %s of domain %d (%s)", n, self.config.gate_memory, d, task.name)

    def _memory_batch(self, labels: torch.Tensor, t: int):
        """``(latents, labels)`` of earlier domains for the gate (``latents`` memory): for each
        stored domain ``d < t`` absent from the batch, as many stored latents as the batch has
        items of domain ``t`` (balanced); ``(None, None)`` when there are none."""
        if self.config.gate_memory != "latents":
            return None, None
        present = set(labels.tolist())
        doms = [d for d in sorted(self.gate_memory) if d < t and d not in present]
        if not doms:
            return None, None
        k = max(1, int((labels == t).sum()))
        ys, ls = [], []
        for d in doms:
            store = self.gate_memory[d]
            idx = torch.randint(0, store.shape[0], (k,), generator=self._mem_gen)
            ys.append(store[idx])
            ls.append(torch.full((k,), d, dtype=torch.long))
        return torch.cat(ys).to(self.device), torch.cat(ls).to(self.device)

    def task_summary(self, task: Task) -> Dict[str, Any]:
        """Parameter counts of the task (``trainable_fraction`` as DANICE counts it: the
        entropy-model quantiles, which only bound the CDF range, excluded)."""
        m = self.unwrapped
        return {"params": sum(p.numel() for p in m.parameters()),
                "trainable_params": sum(p.numel() for p in m.parameters() if p.requires_grad),
                "trainable_fraction": trainable_fraction(m)}

    # -- data -------------------------------------------------------------------------------
    def train_dataset(self, task: Task):
        """Adapters, task ``t >= 1``: items ``(crop, domain label)``, one of each group in turn:
        the task's crops (label ``t``), source crops (label 0, ``replay_source``) and, with
        ``gate_memory=images``, the stored crops of every earlier domain."""
        c = self.config
        if c.strategy != "adapters" or task.index == 0 or any(task.meta.get(k) for k in ("joint", "joint_adapt", "joint_adapt_done")):
            return task.train_set
        src = (self._source_set or task.meta.get("source_train_set")) if c.replay_source else None
        if c.replay_source and src is None:
            log.warning("adapters: no source-domain data to replay (domain 0 only from the gate memory, if any)")
        parts = [(task.train_set, task.index)]
        if src is not None:
            parts.append((src, 0))
        if c.gate_memory == "images":
            parts += [(_Crops(self.gate_memory[d]), d) for d in sorted(self.gate_memory)
                      if d < task.index and not (d == 0 and src is not None)]
        return _LabelledMix(parts)

    def collate(self, items):
        if items and isinstance(items[0], tuple):
            xs, ys = zip(*items)
            return cdata.collate_crops(list(xs)), torch.tensor(ys)
        return cdata.collate_crops(items)

    # -- training ---------------------------------------------------------------------------
    def training_step(self, batch) -> Dict[str, torch.Tensor]:
        """Named losses of one batch, computed in fp32: the driver's autocast (bf16/fp16) is
        switched off here because GDN and the entropy model's likelihoods (rates down to
        1e-9) are not reliable in half precision."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self._training_step(batch)

    def _training_step(self, batch) -> Dict[str, torch.Tensor]:
        m = self.model
        t = self.task.index
        if isinstance(batch, (tuple, list)):
            x, labels = batch
            x, labels = x.to(self.device), labels.to(self.device)
        else:
            x, labels = batch.to(self.device), None
        um = self.unwrapped
        if isinstance(um, AdapterCodec):
            if labels is None:
                labels = torch.full((x.shape[0],), t, device=self.device)
            mem_y, mem_labels = (None, None) if self.task.meta.get("joint_adapt") else self._memory_batch(labels, t)
            # oracle policy: every item decoded with the adapter of its own domain label
            out = m(x, t, labels=labels if um.policy == "oracle" else None, extra_y=mem_y)
            return um.adapter_loss(out, x, labels, self.config.gamma, self.config.mse_scale, mem_labels)
        dom = 0 if getattr(um, "base_codec", False) else self.domain_id(self.task)
        out = m(x, dom)
        return rd_loss(out, x, self.config.lmbda)

    def parameter_groups(self) -> List[dict]:
        return [{"params": [p for p in self.unwrapped.parameters() if p.requires_grad]}]

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, task: Task) -> Dict[str, float]:
        m = self.unwrapped
        m.update(force=False)
        was = m.training
        m.eval()
        dom = self.domain_id(task)
        if getattr(m, "base_codec", False):
            dom_enc = min(dom, 255)
        else:
            dom_enc = dom if dom < m.n_domains() else 0
        res = evaluate_codec(m, (task.eval_set[i] for i in range(len(task.eval_set))), dom_enc, self.config.eval_msssim)
        res["mse"] = 255.0 ** 2 / 10 ** (res["psnr"] / 10) if math.isfinite(res.get("psnr", float("nan"))) else float("nan")
        res["rd"] = res["bpp"] + self.config.lmbda * res["mse"]
        res["domain_id"] = dom_enc
        if isinstance(m, AdapterCodec):
            res["gate_acc"] = self._gate_accuracy(m, task.eval_set, dom)
        m.train(was)
        return res

    def _gate_accuracy(self, m: AdapterCodec, images, dom: int) -> float:
        """Fraction of ``images`` whose gate arg-max is their domain ``dom`` (NaN for a domain
        without an adapter yet): the gate's forgetting, measured."""
        if dom >= m.n_domains() or len(images) == 0:
            return float("nan")
        ok = 0
        dev = next(m.parameters()).device
        for i in range(len(images)):
            x, _ = pad_to_multiple(images[i][None].float().div(255).to(dev), m.downsampling_factor)
            ok += int(int(m.gate(m.analysis(x)).argmax(1)) == dom)
        return ok / len(images)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        m = self.unwrapped
        return {"arch": m.arch(), "model": {k: v.detach().cpu() for k, v in m.state_dict().items()},
                "strategy": self.config.strategy, "teacher": None,
                "gate_memory": {"kind": self.config.gate_memory,
                                "items": {int(d): v.cpu() for d, v in sorted(self.gate_memory.items())}}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        m = build_codec(state["arch"])
        load_state_into(m, state["model"], what="learner state")
        self.model = m.to(self.device)
        self.gate_memory = {}
        mem = state.get("gate_memory")
        if mem is None or (isinstance(mem, dict) and not mem.get("items")):
            return
        items = mem.get("items") if isinstance(mem, dict) else None
        if not isinstance(items, dict) or not all(isinstance(d, int) and isinstance(v, torch.Tensor) and v.dim() == 4
                                                  for d, v in items.items()):
            raise CheckpointError("learner state: gate_memory.items is not a map domain id -> 4-d tensor")
        if mem.get("kind") != self.config.gate_memory:
            # e.g. a source run's task-end checkpoint: init_from_task_end collects this run's kind
            log.warning("learner state holds a gate memory of kind %r, learner.gate_memory is %r: not used",
                        mem.get("kind"), self.config.gate_memory)
            return
        self.gate_memory = {d: v for d, v in items.items()}

    def codec_model(self):
        return self.unwrapped


class _LabelledMix(Dataset):
    """Items ``(crop, label)`` from ``parts`` = ``[(dataset, label), ...]``, one of each part in
    turn (balanced); an epoch is ``len(parts)`` times the first part (smaller parts cycle)."""

    def __init__(self, parts):
        self.parts = [(d, int(lab)) for d, lab in parts if d is not None and len(d)]
        if not self.parts:
            raise ConfigError("no training items (every domain's training set is empty)")

    def __len__(self):
        return len(self.parts[0][0]) * len(self.parts)

    def __getitem__(self, i):
        ds, lab = self.parts[i % len(self.parts)]
        return ds[(i // len(self.parts)) % len(ds)], lab


class _Crops(Dataset):
    """A uint8 tensor ``[n, 3, c, c]`` as a dataset of crops."""

    def __init__(self, crops: torch.Tensor):
        self.crops = crops

    def __len__(self):
        return self.crops.shape[0]

    def __getitem__(self, i):
        return self.crops[i]


# ---------------------------------------------------------------------------------------
# registration with the shared driver
# ---------------------------------------------------------------------------------------
def _register() -> None:
    for name in ("codec",) + tuple(f"codec.{s}" for s in STRATEGIES.names()):
        if name not in engine.LEARNERS:
            cls = CodecLearner if name == "codec" else _strategy_class(name.split(".", 1)[1])
            engine.LEARNERS.register(name)(cls)
    if "domains" not in engine.TASK_BUILDERS:
        engine.TASK_BUILDERS.register("domains")(build_domain_tasks)


def _strategy_class(strategy: str):
    """``codec.<strategy>``: the learner with that strategy as its default."""
    cfg = type(f"CodecConfig_{strategy}", (CodecConfig,), {"__annotations__": {"strategy": str}, "strategy": strategy})
    cfg = dataclass(cfg)
    return type(f"CodecLearner_{strategy}", (CodecLearner,), {"Config": cfg})


_register()
