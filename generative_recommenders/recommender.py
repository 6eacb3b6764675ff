"""A trained run, used: recommendations with titles, scores and embeddings, in the dataset's own ids.

    from generative_recommenders import Recommender
    rec = Recommender.from_run("exps/ml100k/hstu-sampled-softmax-n128-minilm-s42")
    rec.recommend(["1"], k=10)                      # pandas: user_id, rank, item_id, score, title, cold
    rec.recommend_for_history(["50", "172", "181"])  # a history that is not in the data

Ranking is the evaluation's (``evaluation.ranking``): a history's query
embedding dotted with every item's ranking embedding, the history's items at
-inf, top-k. The model reads the newest ``max_sequence_length`` items of a
history, as in training and evaluation; ``exclude_history`` removes every item
of the history given.

Request time: HSTU's relative time bias looks at the gap between each history
item and the moment the recommendation is asked for. The evaluation passes
the target's time; here ``request_time`` defaults to the newest history item's
time (asked right after the last interaction). Without timestamps a history
gets ordinal positions ``0..n-1``, as datasets without times are prepared.

Cold items: an item is cold when it appears in no training example of the
run (under ``validated``, an item seen only as some user's last two items or
before their history window, and every item a ``cold_item_share`` split held
out; the run is assembled as training assembled it, ``trainer/assembly.py``). Its id embedding never learned
anything, so an id-only model leaves cold items out of recommendations and
gives them a NaN score; a model with text (``add``, ``gate``, ``concat``,
``text_only``) scores them from their text embedding and includes them,
marking them ``cold``. ``include_cold=True`` includes them for any model, as
the evaluation ranks them.

Ranking (CTR) runs (DIN, DeepFM): the model scores each (history, item) pair,
so ``recommend`` scores every item after the newest ``max_sequence_length``
items of the history and ``score`` gives click probabilities; they have no
user or item embeddings, and ranking is exact (no faiss index).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch

from generative_recommenders.data.ctr import ItemCategories, read_item_categories
from generative_recommenders.data.dataset import collate_sequences
from generative_recommenders.data.identity import IDENTITY_KEY, check_data_identity
from generative_recommenders.data.sequence_format import SequenceDataset
from generative_recommenders.errors import UserError
from generative_recommenders.evaluation.ranking import candidate_embeddings
from generative_recommenders.modeling.registry import RetrievalModel, import_model_modules
from generative_recommenders.retrieval import INDEX_KINDS, ItemIndex, exact_top_k, load_or_build_index
from generative_recommenders.run_data import chosen_weights, run_data_dir
from generative_recommenders.text.embedding_store import read_item_texts
from generative_recommenders.trainer.assembly import Assembly, assemble
from generative_recommenders.trainer.config import TrainConfig
from generative_recommenders.trainer.run_log import RESULTS_FILE

WEIGHTS = {"best": "best_model.pt", "last": "last_model.pt"}
# Scores held at once by exact ranking: users per chunk x catalogue size.
MAX_SCORES_PER_CHUNK = 1 << 24
QUERY_BATCH = 256
# (history, item) pairs a ranking model scores at once.
PAIR_BATCH = 4096

Ids = Union[str, int, Sequence[Union[str, int]]]
# A history to score from: (0-based items oldest first, their timestamps, the request time, the
# 0-based user it is of, -1 for a history that names no user).
History = Tuple[np.ndarray, np.ndarray, int, int]
# Ranked items: (0-based items best first, their scores).
Ranked = Tuple[np.ndarray, np.ndarray]


class RecommenderError(UserError):
    """A run folder, its data or a request that cannot be served."""


class Embeddings(NamedTuple):
    """``vectors[i]`` belongs to ``ids[i]`` (the dataset's original ids)."""

    ids: np.ndarray
    vectors: np.ndarray


class Scores(NamedTuple):
    """``scores[u, i]`` of ``user_ids[u]`` for ``item_ids[i]``; ``cold[i]`` marks cold items."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray
    cold: np.ndarray


def _run_config(results: Dict[str, Any], results_path: Path) -> TrainConfig:
    """The checked config the run trained with (results.json's ``config``), with the automatic ops
    backends: every backend computes the same values, the device decides."""
    if not isinstance(results.get("config"), dict):
        raise RecommenderError(
            f"{results_path}: holds no config (written before runs recorded theirs); train the run again"
        )
    try:
        config = TrainConfig(**results["config"])
    except TypeError as error:
        raise RecommenderError(f"{results_path}: its config is not this version's ({error}); train the run again") from None
    return dataclasses.replace(config, attention_backend="auto", jagged_backend="auto")


@contextlib.contextmanager
def _bound_gin_config(results: Dict[str, Any]) -> Iterator[None]:
    """The run's gin config bound (the encoders and text fusion read theirs from gin) while the
    model is built; the caller's gin state is restored afterwards."""
    import gin

    import_model_modules()  # their configurables must exist, or parsing would skip their bindings
    previous = gin.config_str()
    with gin.unlock_config():
        gin.clear_config()
        try:
            gin.parse_config(results["gin_config"], skip_unknown=True)
            yield
        finally:
            gin.clear_config()
            if previous:
                gin.parse_config(previous)


def _check_same_data(assembly: Assembly, results: Dict[str, Any], run_dir: Path) -> None:
    """The data found is the run's: the same counts, and the same held-out (cold) items."""
    data_dir, found = assembly.data_dir, {k: v for k, v in assembly.data.stats().items() if k != "name"}
    expected = {key: results["dataset"].get(key) for key in found}
    differences = [f"{key} {expected[key]} vs {found[key]}" for key in found if found[key] != expected[key]]
    recorded_split = results.get("cold_item_split", {}).get("held_out_item_ids")
    assembled_split = assembly.views.header.get("cold_item_split", {}).get("held_out_item_ids")
    if recorded_split is not None and recorded_split != assembled_split:
        differences.append("other held-out (cold) items")
    if differences:
        raise RecommenderError(
            f"{data_dir} is not the data run {run_dir} was trained on ({', '.join(differences)}); "
            f"pass the run's prepared folder (data_dir=..., --data_dir) or prepare that dataset again"
        )


def _as_list(ids: Ids) -> List[str]:
    return [str(ids)] if isinstance(ids, (str, int)) else [str(i) for i in ids]


class EmbeddingScorer:
    """A retrieval model's scores: a history's query embedding dotted with every item's ranking
    embedding (the evaluation's), ranked exactly or by a faiss index saved in the run folder."""

    def __init__(self, model: RetrievalModel, device: torch.device, max_sequence_length: int,
                 index_kind: str, index_path: Path) -> None:
        self.model, self.device, self.max_sequence_length = model, device, max_sequence_length
        self.index_kind, self.index_path = index_kind, index_path
        self._candidate_cache: Optional[torch.Tensor] = None
        self._index_cache: Optional[ItemIndex] = None

    @torch.no_grad()
    def queries(self, histories: Sequence[History]) -> torch.Tensor:
        """Query embeddings ``[B, D]``, batched as the evaluation batches them (``collate_sequences``:
        ids + 1, the request time in the slot after the history), each history cut to its newest
        ``max_sequence_length`` items."""
        queries, cap = [], self.max_sequence_length
        for begin in range(0, len(histories), QUERY_BATCH):
            examples = [
                {
                    "user_index": -1,
                    "history_ids": items[-cap:] + 1,
                    "history_timestamps": timestamps[-cap:],
                    "history_ratings": np.zeros(min(len(items), cap), dtype=np.float32),
                    "target_id": 0,
                    "target_timestamp": request_time,
                    "target_rating": 0.0,
                }
                for items, timestamps, request_time, _ in histories[begin:begin + QUERY_BATCH]
            ]
            batch = {key: value.to(self.device) for key, value in collate_sequences(examples).items()}
            queries.append(
                self.model.query_embeddings(batch["history_ids"], batch["history_lengths"], batch["history_timestamps"])
            )
        return torch.cat(queries)

    @torch.no_grad()
    def candidates(self) -> torch.Tensor:
        """Every item's ranking embedding ``[num_items + 1, D]``, row 0 padding (the evaluation's)."""
        if self._candidate_cache is None:
            self._candidate_cache = candidate_embeddings(self.model)
        return self._candidate_cache

    def scores(self, histories: Sequence[History], items: np.ndarray) -> np.ndarray:
        candidates = self.candidates()[torch.from_numpy(items + 1).to(self.device)]
        return (self.queries(histories) @ candidates.T).cpu().numpy()

    def _index(self) -> ItemIndex:
        if self._index_cache is None:
            self._index_cache = load_or_build_index(self.index_kind, self.candidates()[1:].cpu().numpy(), self.index_path)
        return self._index_cache

    def top_k(self, histories: Sequence[History], excluded: List[np.ndarray], k: int) -> List[Ranked]:
        """Per history, the ``k`` best items but its ``excluded`` ones, a chunk of histories at a time."""
        num_items = self.model.num_items
        chunk = max(1, min(QUERY_BATCH, MAX_SCORES_PER_CHUNK // (num_items + 1)))
        ranked: List[Ranked] = []
        for begin in range(0, len(histories), chunk):
            queries, skip = self.queries(histories[begin:begin + chunk]), excluded[begin:begin + chunk]
            ranked += self._exact_top_k(queries, skip, k) if self.index_kind == "exact" else self._index_top_k(queries, skip, k)
        return ranked

    def _exact_top_k(self, queries: torch.Tensor, excluded: List[np.ndarray], k: int) -> List[Ranked]:
        width = max(1, max(len(items) for items in excluded))
        padded = torch.zeros(len(excluded), width, dtype=torch.int64)
        for row, items in enumerate(excluded):
            padded[row, : len(items)] = torch.from_numpy(items + 1)
        scores, ids = exact_top_k(queries, self.candidates(), k, padded.to(self.device), MAX_SCORES_PER_CHUNK)
        scores, ids = scores.cpu().numpy(), ids.cpu().numpy()
        keep = np.isfinite(scores)  # an excluded item is at -inf
        return [(ids[row][keep[row]] - 1, scores[row][keep[row]]) for row in range(len(excluded))]

    def _index_top_k(self, queries: torch.Tensor, excluded: List[np.ndarray], k: int) -> List[Ranked]:
        most_excluded = max(len(set(items.tolist())) for items in excluded)
        scores, ids = self._index().search(queries.cpu().numpy(), min(k + most_excluded, self.model.num_items))
        out = []
        for row, items in enumerate(excluded):
            keep = (ids[row] >= 0) & ~np.isin(ids[row], items)
            out.append((ids[row][keep][:k], scores[row][keep][:k]))
        return out

    def item_embeddings(self) -> np.ndarray:
        return self.candidates()[1:].cpu().numpy()


class PairScorer:
    """A ranking (CTR) model's scores: click probabilities of (history, item) pairs, every item scored
    after the newest ``max_sequence_length`` history items (as in training); exact ranking only."""

    def __init__(self, model: torch.nn.Module, device: torch.device, max_sequence_length: int,
                 categories: Optional[ItemCategories]) -> None:
        self.model, self.device, self.max_sequence_length, self.categories = model, device, max_sequence_length, categories

    @torch.no_grad()
    def _pair_scores(self, history: np.ndarray, items: np.ndarray, user: int) -> np.ndarray:
        behaviours = torch.from_numpy(history[-self.max_sequence_length:] + 1)
        scores = []
        for begin in range(0, len(items), PAIR_BATCH):
            targets = torch.from_numpy(items[begin:begin + PAIR_BATCH] + 1)
            batch = {
                "history_ids": behaviours.expand(len(targets), -1),
                "history_lengths": torch.full((len(targets),), len(behaviours), dtype=torch.int64),
                "target_ids": targets,
                # A model with a user field reads this user's row (-1: the padding user, all zeros).
                "user_index": torch.full((len(targets),), user, dtype=torch.int64),
            }
            if self.categories is not None:
                table = torch.from_numpy(self.categories.ids)
                batch["history_categories"] = table[batch["history_ids"]]
                batch["target_categories"] = table[targets]
            logits = self.model({key: value.to(self.device) for key, value in batch.items()})
            scores.append(torch.sigmoid(logits).cpu().numpy())
        return np.concatenate(scores)

    def scores(self, histories: Sequence[History], items: np.ndarray) -> np.ndarray:
        return np.stack([self._pair_scores(history, items, user) for history, _, _, user in histories])

    def top_k(self, histories: Sequence[History], excluded: List[np.ndarray], k: int) -> List[Ranked]:
        ranked = []
        for (history, _, _, user), skip in zip(histories, excluded):
            scores = self._pair_scores(history, np.arange(self.model.num_items), user).astype(np.float64)
            scores[skip] = -np.inf
            top = np.argsort(-scores, kind="stable")[:k]
            top = top[np.isfinite(scores[top])]
            ranked.append((top, scores[top].astype(np.float32)))
        return ranked

    def item_embeddings(self) -> np.ndarray:
        raise RecommenderError(
            f"a ranking (CTR) model ({type(self.model).__name__}) scores (history, item) pairs and has no "
            "user or item embeddings; use recommend or score"
        )


def _ctr_categories(assembly: Assembly, results: Dict[str, Any], index: str) -> Optional[ItemCategories]:
    """The item categories a CTR run trained with (None when it used none), checked against the run."""
    if index != "exact":
        raise RecommenderError(
            f"index={index!r}: a ranking (CTR) model scores every (history, item) pair, which no "
            "faiss index serves; use the exact ranking (the default)"
        )
    categories = read_item_categories(assembly.data_dir, assembly.data.num_items)
    found = 0 if categories is None else categories.num_categories
    if found != results.get("num_categories", 0):
        raise RecommenderError(
            f"{assembly.data_dir}/item_metadata.jsonl gives {found} item categories, the run trained with "
            f"{results.get('num_categories', 0)}; pass the run's prepared folder (data_dir=..., --data_dir)"
        )
    return categories if found else None


@dataclass
class Recommender:
    """A trained model with its dataset's maps and item titles; build it with :meth:`from_run`."""

    model: torch.nn.Module  # a RetrievalModel, or a PairScoringModel when task is "ctr"
    scorer: Union[EmbeddingScorer, PairScorer]  # how the model scores (history, item) pairs
    data: SequenceDataset
    data_dir: Path
    run_dir: Path
    weights: str
    max_sequence_length: int
    titles: List[str]  # by 0-based item index: the first line of the item's text
    cold: np.ndarray  # bool by 0-based item index
    uses_text: bool
    include_cold: bool  # recommend and score cold items
    device: torch.device
    task: str = "retrieval"  # or "ctr": the model scores (history, item) pairs

    @classmethod
    def from_run(
        cls,
        run_dir: Union[str, Path],
        weights: Optional[str] = None,
        device: Optional[Union[str, torch.device]] = None,
        data_dir: Optional[Union[str, Path]] = None,
        index: str = "exact",
        include_cold: Optional[bool] = None,
    ) -> "Recommender":
        """Loads a finished run: its weights, dataset maps, item texts and (for text models) text embeddings.

        ``weights`` defaults to the run's choice: ``best`` where validation
        chose an epoch, else ``last``. ``data_dir`` defaults to the prepared
        folder the run was trained on (``run_data.py``), from any current
        folder; the data found there must be the same as the run's. ``index`` picks the retrieval: ``exact`` (chunked
        matrix product) or a faiss index ``flat``, ``hnsw``, ``ivf``, built
        once and saved in the run folder. ``include_cold`` (default: when the
        model has text) ranks and scores cold items too, as the evaluation does.
        """
        run_dir = Path(run_dir)
        results, weights, weights_path = _read_run(run_dir, weights, index)
        config = _run_config(results, run_dir / RESULTS_FILE)
        data_dir = run_data_dir(results, run_dir, config.data_root, config.dataset_name, data_dir)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with _bound_gin_config(results):
            assembly = assemble(config, data_dir, device)
        _check_same_data(assembly, results, run_dir)
        check_data_identity(  # data/identity.py: the same counts are not the same data
            results.get(IDENTITY_KEY), assembly.data_dir, run_dir,
            "pass the run's prepared folder (data_dir=..., --data_dir), or prepare that dataset again as it was",
            assembly.data.maps,
        )
        texts = read_item_texts(assembly.data_dir)
        if len(texts) != assembly.data.num_items:
            raise RecommenderError(
                f"{assembly.data_dir}/item_texts.json holds {len(texts)} texts for {assembly.data.num_items} items; "
                "prepare the dataset again"
            )
        model = assembly.model
        try:
            model.load_state_dict(torch.load(weights_path, map_location=device, weights_only=True))
        except (RuntimeError, OSError, EOFError) as e:
            first_line = str(e).strip().splitlines()[0]
            raise RecommenderError(f"{weights_path}: not this run's weights ({first_line}); retrain the run") from None
        model.eval()
        if isinstance(model, RetrievalModel):
            index_path = run_dir / f"item_index_{weights}_{index}.faiss"
            scorer = EmbeddingScorer(model, device, config.max_sequence_length, index, index_path)
        else:
            scorer = PairScorer(model, device, config.max_sequence_length, _ctr_categories(assembly, results, index))
        uses_text = assembly.text_embeddings is not None
        return cls(
            model=model,
            scorer=scorer,
            data=assembly.data,
            data_dir=assembly.data_dir,
            run_dir=run_dir,
            weights=weights,
            max_sequence_length=config.max_sequence_length,
            titles=[text.split("\n", 1)[0] for text in texts],
            cold=assembly.untrained_items(),
            uses_text=uses_text,
            include_cold=uses_text if include_cold is None else include_cold,
            device=device,
            task=assembly.task.name,
        )

    # ------------------------------------------------------------------ ids

    @property
    def num_items(self) -> int:
        return self.data.num_items

    @property
    def user_ids(self) -> List[str]:
        """Every user of the dataset, by original id."""
        return self.data.maps["id2user"]

    @property
    def cold_item_ids(self) -> List[str]:
        return [self.data.maps["id2item"][i] for i in np.flatnonzero(self.cold)]

    def _user_indices(self, user_ids: Ids) -> List[int]:
        user2id = self.data.maps["user2id"]
        ids = _as_list(user_ids)
        if not ids:
            raise RecommenderError("no user ids given: pass at least one")
        for user in ids:
            if user not in user2id:
                raise RecommenderError(
                    f"unknown user id {user!r}: {self.data_dir}/data_maps.json has no such user "
                    f"({len(user2id)} users, e.g. {self.user_ids[0]!r}); use an id of the prepared data, "
                    f"or recommend_for_history (--history) for someone new"
                )
        return [user2id[user] for user in ids]

    def _item_indices(self, item_ids: Ids, what: str) -> np.ndarray:
        item2id = self.data.maps["item2id"]
        ids = _as_list(item_ids)
        for item in ids:
            if item not in item2id:
                raise RecommenderError(
                    f"unknown item id {item!r} in the {what}: {self.data_dir}/data_maps.json has no such item "
                    f"({len(item2id)} items, e.g. {self.data.maps['id2item'][0]!r}); use the dataset's original item ids"
                )
        return np.array([item2id[item] for item in ids], dtype=np.int64)

    def _check_k(self, k: int) -> None:
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= self.num_items:
            raise RecommenderError(f"k={k!r}: must be a whole number from 1 to {self.num_items} (the catalogue's size)")

    # -------------------------------------------------------------- ranking

    def _user_history(self, user: int) -> History:
        timestamps = self.data.timestamps[user]
        return self.data.item_ids[user], timestamps, int(timestamps[-1]), user

    def _frame(self, ranked: List[Tuple[np.ndarray, np.ndarray]], user_ids: Optional[List[str]]) -> pd.DataFrame:
        counts = [len(items) for items, _ in ranked]
        items = np.concatenate([items for items, _ in ranked]).astype(np.int64)
        columns = {
            "rank": np.concatenate([np.arange(1, count + 1) for count in counts]).astype(np.int64),
            "item_id": np.asarray(self.data.maps["id2item"], dtype=object)[items],
            "score": np.concatenate([scores for _, scores in ranked]).astype(np.float32),
            "title": np.asarray(self.titles, dtype=object)[items],
            "cold": self.cold[items],
        }
        if user_ids is not None:
            columns = {"user_id": np.repeat(np.asarray(user_ids, dtype=object), counts), **columns}
        return pd.DataFrame(columns)

    def _recommend(self, histories: List[History], excluded: List[np.ndarray], k: int) -> List[Ranked]:
        if not self.include_cold:  # cold items are left out where the model cannot score them
            cold = np.flatnonzero(self.cold)
            excluded = [np.concatenate([items, cold]) for items in excluded]
        return self.scorer.top_k(histories, excluded, k)

    # ----------------------------------------------------------- the API

    def recommend(self, user_ids: Ids, k: int = 10, exclude_history: bool = True) -> pd.DataFrame:
        """Top-``k`` items for users of the dataset (original ids), from their whole sequence.

        Returns ``user_id, rank, item_id, score, title, cold``, ``k`` rows per
        user (fewer only when the history leaves fewer items). The request
        time is each user's last interaction. ``exclude_history=False`` keeps
        the items the user has already seen.
        """
        self._check_k(k)
        users = self._user_indices(user_ids)
        histories = [self._user_history(user) for user in users]
        excluded = [items if exclude_history else items[:0] for items, *_ in histories]
        return self._frame(self._recommend(histories, excluded, k), _as_list(user_ids))

    def recommend_for_history(
        self,
        item_ids: Ids,
        timestamps: Optional[Sequence[int]] = None,
        request_time: Optional[int] = None,
        k: int = 10,
        exclude_history: bool = True,
    ) -> pd.DataFrame:
        """Top-``k`` items after a history that need not be in the data.

        ``item_ids``: original item ids, oldest first. ``timestamps``: one per
        item, non-decreasing, in the dataset's unit (default: positions
        ``0..n-1``). ``request_time``: when the recommendation is asked for
        (default: the newest item's time). Returns ``rank, item_id, score,
        title, cold``.
        """
        self._check_k(k)
        items = self._item_indices(item_ids, "history")
        if len(items) == 0:
            raise RecommenderError("the history is empty: give at least one item id (oldest first)")
        times = self._history_timestamps(timestamps, len(items))
        request = int(times[-1]) if request_time is None else int(request_time)
        if request < times[-1]:
            raise RecommenderError(
                f"request_time={request} is before the newest history item's time {int(times[-1])}: "
                f"ask at or after the last interaction"
            )
        excluded = items if exclude_history else items[:0]
        return self._frame(self._recommend([(items, times, request, -1)], [excluded], k), None)

    @staticmethod
    def _history_timestamps(timestamps: Optional[Sequence[int]], length: int) -> np.ndarray:
        if timestamps is None:
            return np.arange(length, dtype=np.int64)
        times = np.asarray(timestamps, dtype=np.int64)
        if times.shape != (length,):
            raise RecommenderError(f"{times.size} timestamps for {length} history items: give one per item, or none")
        if (np.diff(times) < 0).any():
            raise RecommenderError(f"the history's timestamps {times.tolist()} are not in order: list the items oldest first")
        return times

    def score(self, user_ids: Ids, item_ids: Ids) -> Scores:
        """The ranking score of each user (from their whole sequence) for each item: the dot product
        the retrieval ranks by, or a CTR model's click probability.

        A cold item's score is NaN unless cold items are included (a model with text).
        """
        users = self._user_indices(user_ids)
        items = self._item_indices(item_ids, "items to score")
        scores = self.scorer.scores([self._user_history(user) for user in users], items)
        cold = self.cold[items]
        if not self.include_cold:
            scores[:, cold] = np.nan
        return Scores(np.array(_as_list(user_ids)), np.array(_as_list(item_ids)), scores, cold)

    def item_embeddings(self) -> Embeddings:
        """Every item's ranking embedding (L2-normalised as ranked) ``[num_items, D]``, by original id."""
        return Embeddings(np.array(self.data.maps["id2item"]), self.scorer.item_embeddings())

    def user_embeddings(self, user_ids: Optional[Ids] = None) -> Embeddings:
        """Users' query embeddings ``[U, D]`` from their whole sequence (default: every user)."""
        self.scorer.item_embeddings()  # a ranking model refuses: it has none
        ids = self.user_ids if user_ids is None else _as_list(user_ids)
        queries = self.scorer.queries([self._user_history(user) for user in self._user_indices(ids)])
        return Embeddings(np.array(ids), queries.cpu().numpy())


def _read_run(run_dir: Path, weights: Optional[str], index: str) -> Tuple[Dict[str, Any], str, Path]:
    """The run's results record, its weights (default: the run's chosen ones) and their path, checked."""
    results_path = run_dir / RESULTS_FILE
    if not results_path.is_file():
        raise RecommenderError(f"{results_path} not found: the run folder must be a training run's (exps/<dataset>/<run>)")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
        results["dataset"].items()
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise RecommenderError(f"{results_path}: not a run's results file ({type(e).__name__}: {e})") from None
    if not isinstance(results.get("gin_config"), str):
        raise RecommenderError(f"{results_path}: holds no gin_config; the run did not start properly, train it again")
    weights = chosen_weights(results) if weights is None else weights
    if weights not in WEIGHTS:
        raise RecommenderError(f"weights={weights!r}: choose 'best' or 'last'")
    if index not in INDEX_KINDS:
        raise RecommenderError(f"index={index!r}: choose one of {', '.join(INDEX_KINDS)}")
    weights_path = run_dir / WEIGHTS[weights]
    if not weights_path.is_file():
        other = next((w for w, f in WEIGHTS.items() if w != weights and (run_dir / f).is_file()), None)
        fix = f"use weights='{other}' (--weights {other})" if other else "let the training run finish (it writes the weights at its end)"
        raise RecommenderError(f"{weights_path} not found: {fix}")
    return results, weights, weights_path
