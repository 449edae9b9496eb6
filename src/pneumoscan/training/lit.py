"""The LightningModule: loss, class weights, metrics, optimizer and scheduler.

The network itself is a plain `networks.Classifier` (no Lightning inside), so it exports and serves
without the trainer. When the backbone is frozen, `head_only=True` trains the head on cached
backbone features instead of images.

Under DDP every logged value is reduced over the ranks: losses with `sync_dist`, and the
torchmetrics objects gather every rank's predictions when Lightning computes them at epoch end,
so each rank's checkpoint, early-stopping and scheduler decisions see the same whole-set scores.
"""

from __future__ import annotations

import lightning as L
import torch
import torchmetrics
from torch import nn

from pneumoscan.core.config import TrainConfig


def monitor_metric(num_classes: int) -> str:
    """ROC AUC for binary (threshold-free), macro-F1 for three-class (balances the rare virus)."""
    return "val/auroc" if num_classes == 2 else "val/macro_f1"


class LitClassifier(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        train_config: TrainConfig,
        class_weights: torch.Tensor | None = None,
        head_only: bool = False,
        max_epochs: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.train_config = train_config
        self.head_only = head_only
        self.max_epochs = max_epochs
        self.loss = nn.CrossEntropyLoss(
            weight=class_weights, label_smoothing=train_config.label_smoothing
        )
        task = "binary" if num_classes == 2 else "multiclass"
        self.val_metrics = torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.Accuracy(task="multiclass", num_classes=num_classes),
                "macro_f1": torchmetrics.F1Score(
                    task="multiclass", num_classes=num_classes, average="macro"
                ),
            },
            prefix="val/",
        )
        self.val_auroc = (
            torchmetrics.AUROC(task="binary")
            if task == "binary"
            else torchmetrics.AUROC(task="multiclass", num_classes=num_classes, average="macro")
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            return self.model.forward_head(inputs.float())
        return self.model(inputs.contiguous(memory_format=torch.channels_last))

    def training_step(self, batch, batch_index: int) -> torch.Tensor:
        inputs, targets = batch
        loss = self.loss(self(inputs), targets)
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(targets),
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch, batch_index: int) -> None:
        inputs, targets = batch
        logits = self(inputs)
        probabilities = logits.softmax(dim=1)
        self.log(
            "val/loss",
            self.loss(logits, targets),
            on_epoch=True,
            prog_bar=True,
            batch_size=len(targets),
            sync_dist=True,
        )
        self.val_metrics.update(probabilities, targets)
        self.val_auroc.update(
            probabilities[:, 1] if self.num_classes == 2 else probabilities, targets
        )
        # Logged as metric objects: Lightning computes (and syncs) them once at epoch end, then resets.
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/auroc", self.val_auroc, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self):
        config = self.train_config
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
            )
        elif config.optimizer == "adam":
            optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.AdamW(
                parameters, lr=config.lr, weight_decay=config.weight_decay
            )
        if config.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.2, patience=config.plateau_patience
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {
                    "scheduler": scheduler,
                    "monitor": monitor_metric(self.num_classes),
                },
            }
        if config.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, self.max_epochs)
            )
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        return optimizer
