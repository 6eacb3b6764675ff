"""One run's pieces from its config: data, text table, task, views (cold-item split included) and model.

Training (``train.build``) and serving (``Recommender.from_run``) both assemble a
run here, so what a trained model was trained on has one definition.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from generative_recommenders.data.sequence_format import SequenceDataset, load_sequence_dataset
from generative_recommenders.modeling.registry import ModelInputs, build_model
from generative_recommenders.text.embedding_store import load_dataset_text_embeddings
from generative_recommenders.trainer.config import TrainConfig
from generative_recommenders.trainer.tasks import Task, TaskViews, task_for


@dataclasses.dataclass
class Assembly:
    """What a run is made of; training adds loaders and an optimizer, serving the trained weights."""

    config: TrainConfig
    data_dir: Path
    data: SequenceDataset
    text_embeddings: Optional[torch.Tensor]  # [num_items + 1, T], or None for an id-only model
    task: Task
    views: TaskViews
    model: torch.nn.Module

    def untrained_items(self) -> np.ndarray:
        """Bool by 0-based item index: items no training example held (cold items included)."""
        return self.task.untrained_items(self.data, self.views)


def model_inputs(
    config: TrainConfig,
    num_items: int,
    text_embeddings: Optional[torch.Tensor],
    num_categories: int = 0,
    num_users: int = 0,
) -> ModelInputs:
    """What the model registry's builders get from a run's config and data."""
    return ModelInputs(
        num_items=num_items,
        embedding_dim=config.item_embedding_dim,
        num_positions=config.num_positions,
        dropout_rate=config.dropout_rate,
        user_embedding_norm=config.user_embedding_norm,
        item_l2_norm=config.item_l2_norm,
        l2_norm_eps=config.l2_norm_eps,
        text_embeddings=text_embeddings,
        attention_backend=config.attention_backend,
        jagged_backend=config.jagged_backend,
        num_categories=num_categories,
        num_users=num_users,
    )


def assemble(
    config: TrainConfig, data_dir: Optional[os.PathLike] = None, device: torch.device = torch.device("cpu")
) -> Assembly:
    """Reads the run's data (``data_dir``, default ``<data_root>/<dataset_name>``) and builds its task,
    views and untrained model on ``device``. The model's weights draw from torch's global generator:
    seed it first to get the run's initial weights."""
    data_dir = Path(data_dir) if data_dir is not None else Path(config.data_root) / config.dataset_name
    task = task_for(config)  # the config checked against its task before anything is read
    data = load_sequence_dataset(data_dir)
    text_embeddings = (
        load_dataset_text_embeddings(data_dir, config.text_embedding_model, data.num_items)
        if config.with_text
        else None
    )
    views = task.views(data, data_dir)
    inputs = model_inputs(config, data.num_items, text_embeddings, views.num_categories, views.num_users)
    model = build_model(config.main_module, inputs).to(device)
    return Assembly(config, data_dir, data, text_embeddings, task, views, model)
