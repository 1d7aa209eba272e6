# An extract of DoReMi's doremi/trainer.py (sangmichaelxie/doremi at 7cde52d1848737aa967ecbdb9e643cf334de160d, MIT,
# ../LICENSE): lines 6 and 10-12 (imports), the class line (its base, transformers' Trainer, left out), lines 157-163
# (write_weights, read_weights) and 239-270 (update_domain_weights), unchanged. See ../README.md.
import wandb
import torch
import torch.distributed as dist
from torch import nn


class DoReMiTrainer:
    def write_weights(self, weights):
        self.model.update_counter += 1
        self.model.train_domain_weights[:] = weights.float()
        self.model.avg_domain_weights[:] = (self.model.avg_domain_weights * (self.model.update_counter - 1) + weights) / self.model.update_counter

    def read_weights(self):
        return self.model.train_domain_weights.clone()
    def update_domain_weights(self, scores, scores_mask, domain_ids):
        wandb_log_dict = {}
        train_domain_weights = self.read_weights()

        scores = scores.detach()
        domain_ids = domain_ids.detach()

        if self.args.doremi_optimizer == 'doremiv1':
            perdomain_scores = []
            for domain_id in range(len(train_domain_weights)):
                domain_mask = (domain_ids == domain_id)
                perdomain_scores_mask = scores_mask[domain_mask]
                if domain_mask.sum() > 0:
                    curr_domain_scores = torch.clip(scores[domain_mask][perdomain_scores_mask], min=0).mean()
                else:
                    curr_domain_scores = self.model.perdomain_scores[domain_id]
                perdomain_scores.append(curr_domain_scores)
            self.model.perdomain_scores[:] = torch.tensor(perdomain_scores).float()
            log_new_train_domain_weights = torch.log(train_domain_weights) + self.args.reweight_eta * self.model.perdomain_scores
            log_new_train_domain_weights = log_new_train_domain_weights - torch.logsumexp(log_new_train_domain_weights, dim=0)
            train_domain_weights = (1-self.args.reweight_eps) * torch.exp(log_new_train_domain_weights) + self.args.reweight_eps / len(log_new_train_domain_weights)
            self.write_weights(train_domain_weights)
        else:
            raise ValueError(f"DoReMi optimizer {self.args.doremi_optimizer} not supported")

        for domain_idx in range(len(train_domain_weights)):
            domain_name = self.domain_list[domain_idx]
            wandb_log_dict[f'avg_domain_weights/{domain_name}'] = self.model.avg_domain_weights[domain_idx].item()
            wandb_log_dict[f'train_domain_weights/{domain_name}'] = self.model.train_domain_weights[domain_idx].item()
            wandb_log_dict[f'perdomain_scores/{domain_name}'] = self.model.perdomain_scores[domain_idx].item()
        wandb_log_dict['max_domain_id'] = domain_ids.max().item()
        wandb.log(wandb_log_dict, commit=False)
