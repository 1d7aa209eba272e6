# An extract of olmix/generate/synthesize_mixture.py (allenai/olmix, Apache-2.0; its commit in
# tests/assets/olmix/COMMIT): the swarm's generator, `generate_weights_dirichlet`, and what it calls, lines 2, 5, 7-8,
# 14-15, 21, 23, 30 (trimmed to `SourceConfig`), 33-128, 131-510 and 802-836 copied unchanged. The rest (the olmo_core,
# gcsfs and s3fs imports, token counting from files, `mk_mixtures`, plots) is left out: the draws use none of it.
# `mk_mixtures` seeds Python's and numpy's global generators with the swarm's seed (its lines 517-518) before it calls
# the generator; a caller does the same.
import logging
import random
from collections import defaultdict
from copy import deepcopy

import numpy as np
import pandas as pd
from tqdm import tqdm

logger = logging.getLogger(__name__)

from olmix.aliases import SourceConfig


class ConfigDefaults:
    min_strength: float = 0.1
    max_strength: float = 5.0
    sample_multiplier: int = 10
    minimum_weight: float = 2e-3  # 0.002


def leaf_to_source(leaf_weights: np.ndarray, domains: list[str]) -> dict[str, float]:
    """
    Given a flat vector of weights at the leaf level (like 'dclm:math' or 'wikipedia'),
    return a dict mapping each source to its total weight.
    """
    assert len(leaf_weights) == len(domains), "Vector and domain lengths must match"
    source_dist = defaultdict(float)
    for weight, domain in zip(leaf_weights, domains):
        source = domain.split(":", 1)[0]  # supports both 'source' and 'source:topic'
        source_dist[source] += weight
    return dict(source_dist)


def clip_candidates_by_level(
    candidates,
    idx_to_level,
    domains,
    minimum_source_weight,
    minimum_topic_weight,
    fixed_topic_weights,
):
    assert len(candidates[0]) == len(idx_to_level), "Mismatch between weights and level types."

    # get the weight per source
    source_totals = leaf_to_source(candidates[0], domains)

    # we clip topics to be minimum_topic_weight * source_totals[source] (relative), and we clip sources to be minimum_source_weight (absolute)
    for idx, level in enumerate(idx_to_level):
        weight = candidates[0][idx]
        domain = domains[idx]
        source = domain.split(":", 1)[0] if ":" in domain else domain

        if source in fixed_topic_weights:
            # this source has fixed topic weights, so we don't clip it
            continue

        if level == "source" and weight < minimum_source_weight:
            candidates[0][idx] = 0.0
        elif level == "topic":
            threshold = minimum_topic_weight * source_totals[source]
            if weight < threshold:
                candidates[0][idx] = 0.0

    # normalize
    total = candidates.sum()
    if total > 0:
        candidates /= total
    else:
        raise ValueError("All weights were clipped to zero.")

    return candidates


def sample_has_required_sources_and_topics(
    sample_vector, domains, nonzero_domains, minimum_source_weight, minimum_topic_weight
):
    # Compute source-level totals
    source_weights = leaf_to_source(sample_vector, domains)

    # Group topic weights under their sources
    topic_weights = defaultdict(list)  # source -> list of (idx, weight)
    for idx, weight in enumerate(sample_vector):
        domain = domains[idx]
        source = domain.split(":", 1)[0] if ":" in domain else domain
        topic_weights[source].append((idx, weight))

    # Clip topic weights below the dynamic per-topic threshold
    clipped_source_sums = defaultdict(float)
    topic_above_threshold = set()
    for source, topics in topic_weights.items():
        total = source_weights[source]
        threshold = minimum_topic_weight * total
        for idx, weight in topics:
            if weight >= threshold:
                clipped_source_sums[source] += weight
                topic_above_threshold.add(domains[idx])

    # Check all nonzero constraints
    for required in nonzero_domains:
        if ":" in required:
            # Topic-level requirement
            if required not in topic_above_threshold:
                return False
        else:
            # Source-level requirement
            if clipped_source_sums[required] <= minimum_source_weight:
                return False

    return True


def generate_weights_dirichlet(
    sources: list[SourceConfig],  # flat
    leaf_dist: dict[str, float],
    minimum_source_weight: float,
    minimum_topic_weight: float,
    num_samples_out: int,
    source_temperature: float,
    topic_temperature: float,
    min_source_strength: float,
    max_source_strength: float,
    min_topic_strength: float,
    max_topic_strength: float,
    max_tokens: int,
    leaf_tokens: dict[str, int],
    repetition_factor: float,
    manual_prior: dict[str, float] | None,
    manual_topic_prior: dict[str, float] | None,
    sample_multiplier: int | None,
    enable_bound: bool = True,
    nonzero_weight: list[str] | None = None,
    existing_mix_file: str | None = None,
):
    """
    Generate weights for each domain group using a dirichlet distribution.
    The list of domains is always sorted to be in alphabetical order (i.e. alphabetical on sources, then on topics).
    """

    collected_samples: list[tuple[np.ndarray, np.ndarray]] = []
    weight_bounds = None

    prior_dist = np.array([v for _, v in leaf_dist.items()])
    logger.info(f"Number of leaf domains: {len(prior_dist)}")
    domains = [k for k, _ in leaf_dist.items()]
    source_names = [source.name for source in sources]
    idx_to_level = ["source" if name in source_names else "topic" for name in leaf_dist]

    if enable_bound:
        # construct weight bound based on leaf_token counts, repetition_factor and max_tokens
        leaf_tokens_list = np.array([leaf_tokens[k] for k in leaf_dist])
        caps = np.minimum(leaf_tokens_list * repetition_factor / max_tokens, 1.0)
        weight_bounds = [(0.0, caps[idx]) for idx in range(len(prior_dist))]
        grouped_bounds = {domain: weight_bounds[idx] for idx, domain in enumerate(domains)}
        logger.info(f"Weight bounds: {grouped_bounds}")

    # split prior distribution into source and topic distributions and tweak it according to the manual prior
    # Note: "topic" here refers to any leaf-level unit (could be topic, quality bucket, or topic:quality)
    topic_distributions = {}
    source_distribution = []

    # If manual_topic_prior spans multiple sources, derive per-source ratios from it and fold them
    # into manual_prior so the source-level Dirichlet uses the correct proportions.
    if manual_topic_prior is not None:
        manual_sources_from_topics = set(key.split(":")[0] for key in manual_topic_prior.keys())
        if len(manual_sources_from_topics) > 1:
            manual_source_ratios_from_topics = {}
            for domain in manual_sources_from_topics:
                domain_total = sum(value for key, value in manual_topic_prior.items() if key.startswith(f"{domain}:"))
                manual_source_ratios_from_topics[domain] = domain_total
            manual_source_ratios_from_topics = {
                domain: ratio / sum(manual_source_ratios_from_topics.values())
                for domain, ratio in manual_source_ratios_from_topics.items()
            }
            remaining_sources = set(source_names).difference(manual_sources_from_topics)
            remaining_ratios = {}
            for domain in remaining_sources:
                if manual_prior is not None and domain in manual_prior:
                    remaining_ratios[domain] = manual_prior[domain]
                else:
                    remaining_ratios[domain] = sum(v for k, v in leaf_dist.items() if k.startswith(f"{domain}:"))
            total_remaining = sum(remaining_ratios.values())
            total_for_manual_domains = 1 - total_remaining
            manual_source_ratios_from_topics = {
                domain: ratio * total_for_manual_domains for domain, ratio in manual_source_ratios_from_topics.items()
            }
            remaining_ratios.update(manual_source_ratios_from_topics)
            manual_prior = remaining_ratios

    for source_config in sorted(sources, key=lambda x: x.name):
        if source_config.topics:
            # this source has topics - collect all leaf-level units
            if manual_topic_prior is not None and all(
                f"{source_config.name}:{topic.name}" in manual_topic_prior for topic in source_config.topics
            ):
                # Use manual topic prior, expanding to leaf level for sources with quality buckets.
                unit_weights = []
                for topic in sorted(source_config.topics, key=lambda x: x.name):
                    topic_weight = manual_topic_prior[f"{source_config.name}:{topic.name}"]
                    if topic.quality:
                        quality_counts = [
                            leaf_dist[f"{source_config.name}:{topic.name}:{q.name}"]
                            for q in sorted(topic.quality, key=lambda x: x.name)
                        ]
                        total_quality = sum(quality_counts)
                        for qc in quality_counts:
                            unit_weights.append(topic_weight * (qc / total_quality) if total_quality > 0 else 0)
                    else:
                        unit_weights.append(topic_weight)
                normalized_weights = np.array(unit_weights)
                topic_distributions[source_config.name] = normalized_weights / normalized_weights.sum()

                if manual_prior is not None and source_config.name in manual_prior:
                    source_distribution.append(manual_prior[source_config.name])
                else:
                    natural_sum = 0.0
                    for topic in sorted(source_config.topics, key=lambda x: x.name):
                        if topic.quality:
                            for q in sorted(topic.quality, key=lambda x: x.name):
                                natural_sum += leaf_dist[f"{source_config.name}:{topic.name}:{q.name}"]
                        else:
                            natural_sum += leaf_dist[f"{source_config.name}:{topic.name}"]
                    source_distribution.append(natural_sum)
            else:
                unit_weights = []
                for topic in sorted(source_config.topics, key=lambda x: x.name):
                    if topic.quality:
                        # Each quality bucket is a separate unit
                        for q in sorted(topic.quality, key=lambda x: x.name):
                            unit_weights.append(leaf_dist[f"{source_config.name}:{topic.name}:{q.name}"])
                    else:
                        # Topic is the unit
                        unit_weights.append(leaf_dist[f"{source_config.name}:{topic.name}"])
                weights = np.array(unit_weights)
                normalized_weights = weights / weights.sum()
                topic_distributions[source_config.name] = normalized_weights

                if manual_prior is not None and source_config.name in manual_prior:
                    source_distribution.append(manual_prior[source_config.name])
                else:
                    source_distribution.append(weights.sum())
        elif source_config.quality:
            # Source-level quality buckets (no topics)
            unit_weights = [
                leaf_dist[f"{source_config.name}:{q.name}"] for q in sorted(source_config.quality, key=lambda x: x.name)
            ]
            weights = np.array(unit_weights)
            normalized_weights = weights / weights.sum()
            topic_distributions[source_config.name] = normalized_weights

            if manual_prior is not None and source_config.name in manual_prior:
                source_distribution.append(manual_prior[source_config.name])
            else:
                source_distribution.append(weights.sum())
        else:
            # this source does not have topics or quality
            topic_distributions[source_config.name] = np.array([1.0])
            if manual_prior is not None and source_config.name in manual_prior:
                source_distribution.append(manual_prior[source_config.name])
            else:
                source_distribution.append(leaf_dist[source_config.name])

    source_distribution = np.array(source_distribution)
    source_distribution /= source_distribution.sum()

    logger.info(f"Source prior: {source_distribution}")
    logger.info(f"Topic prior: {topic_distributions}")
    if source_temperature < 1.0:
        source_prior = source_distribution**source_temperature
        source_prior = source_prior / np.sum(source_prior)
        logger.info(f"Source prior after temperature scaling: {source_prior}")
    else:
        source_prior = source_distribution

    if topic_temperature < 1.0:
        topic_priors = deepcopy(topic_distributions)
        for source, topic_prior in topic_priors.items():
            topic_prior = topic_prior**topic_temperature
            topic_prior = topic_prior / np.sum(topic_prior)
            topic_priors[source] = topic_prior
        logger.info(f"Topic priors after temperature scaling: {topic_priors}")
    else:
        topic_priors = deepcopy(topic_distributions)

    fixed_topic_weights = {}
    for source in sources:
        if source.topics:
            if source.topics[0].weight is not None:
                # this source has topics with a fixed weight, so we use that weight as the prior
                # Need to expand to leaf-level units if topics have quality buckets
                unit_weights = []
                for topic in sorted(source.topics, key=lambda x: x.name):
                    if topic.quality:
                        # Check if quality buckets have explicit weights
                        has_quality_weights = any(q.weight is not None for q in topic.quality)
                        if has_quality_weights:
                            # Use explicit quality weights (normalize to sum to 1)
                            quality_weights = [
                                q.weight if q.weight is not None else 0.0
                                for q in sorted(topic.quality, key=lambda x: x.name)
                            ]
                            total_quality_weight = sum(quality_weights)
                            assert topic.weight is not None
                            for qw in quality_weights:
                                unit_weights.append(
                                    topic.weight * (qw / total_quality_weight) if total_quality_weight > 0 else 0
                                )
                        else:
                            # Distribute topic weight proportionally across quality buckets by token count
                            quality_tokens = [
                                leaf_dist[f"{source.name}:{topic.name}:{q.name}"]
                                for q in sorted(topic.quality, key=lambda x: x.name)
                            ]
                            total_quality_tokens = sum(quality_tokens)
                            assert topic.weight is not None
                            for qt in quality_tokens:
                                unit_weights.append(
                                    topic.weight * (qt / total_quality_tokens) if total_quality_tokens > 0 else 0
                                )
                    else:
                        unit_weights.append(topic.weight)
                conditional_weight = np.array([unit_weights])
                logger.info(f"Using fixed topic weights for source '{source.name}': {conditional_weight[0]}")
                fixed_topic_weights[source.name] = conditional_weight

    sample_multiplier = sample_multiplier if sample_multiplier else ConfigDefaults.sample_multiplier

    fixed_source_weights_list: list[float] | None = None
    if any(source.weight is not None for source in sources):
        missing = [s.name for s in sources if s.weight is None]
        if missing:
            raise ValueError(f"All sources must have a weight if any do; missing: {missing}")
        fixed_source_weights_list = [
            source_config.weight  # type: ignore[list-item]
            for source_config in sorted(sources, key=lambda x: x.name)
        ]

    if existing_mix_file is not None:
        ratios = pd.read_pickle(existing_mix_file)
        valid_existing_mixes = ratios[ratios[domains].sum(axis=1) == 1][
            domains
        ].values  # keep the rows that have probabilities that add up to 1 on the domains we're mixing on
    for _ in tqdm(range(num_samples_out * sample_multiplier)):
        candidates = []

        # first, generate source-level weights
        if min_source_strength == max_source_strength:
            if fixed_source_weights_list is not None:
                # if we have fixed source weights, we use those
                source_samples = np.array([fixed_source_weights_list])
            else:
                source_samples = np.random.dirichlet(source_prior * min_source_strength, 1)
        else:
            source_samples = []
            if fixed_source_weights_list is not None:
                for _ in range(15):
                    source_samples.append(np.array([fixed_source_weights_list]))
            else:
                min_source_strength_log = np.log10(min_source_strength)
                max_source_strength_log = np.log10(max_source_strength)
                for strength in np.logspace(min_source_strength_log, max_source_strength_log, 15):
                    samples_per_strength = np.random.dirichlet(source_prior * strength, 1)
                    source_samples.append(samples_per_strength)

        # then, generate topic-level weights
        topic_samples = defaultdict(list)
        for source, topic_prior in topic_priors.items():
            if source in fixed_topic_weights:
                # this source has fixed topic weights, so we use those
                conditional_weight = fixed_topic_weights[source]
                if min_topic_strength == max_topic_strength:
                    topic_samples[source].append(conditional_weight)
                else:
                    for _ in range(15):
                        topic_samples[source].append(conditional_weight)
                continue

            if min_topic_strength == max_topic_strength:
                topic_samples[source].append(np.random.dirichlet(topic_prior * min_topic_strength, 1))
            else:
                min_topic_strength_log = np.log10(min_topic_strength)
                max_topic_strength_log = np.log10(max_topic_strength)
                for strength in np.logspace(min_topic_strength_log, max_topic_strength_log, 15):
                    samples_per_strength = np.random.dirichlet(topic_prior * strength, 1)
                    topic_samples[source].append(samples_per_strength)

        # convert from source_samples and topic_samples back to a set of leaf-level samples
        candidates = []
        for i, source_sample in enumerate(source_samples):
            leaf_level_sample = {
                source: samples[i][0] * source_sample[0, j] for j, (source, samples) in enumerate(topic_samples.items())
            }
            flattened_sample = np.concatenate([arr for arr in list(leaf_level_sample.values())]).reshape(1, -1)
            candidates.append(flattened_sample)

        filtered_candidates = []

        # Filter out candidates that are outside the bounds
        if weight_bounds:
            filtered_candidates = [
                sample
                for sample in candidates
                if all(lower <= sample[0][idx] <= upper for idx, (lower, upper) in enumerate(weight_bounds))
            ]
        else:
            filtered_candidates = candidates

        if nonzero_weight:
            source_names = set(nonzero_weight)
            # Filter candidates
            filtered_candidates = [
                sample
                for sample in filtered_candidates
                if sample_has_required_sources_and_topics(
                    sample[0], domains, source_names, minimum_source_weight, minimum_topic_weight
                )
            ]

        if not filtered_candidates:
            logger.warning("No candidates left after filtering according to weight bounds and nonzero weights!")
            continue

        candidates = random.choice(filtered_candidates)

        if minimum_source_weight == minimum_topic_weight:
            candidates = np.where(candidates < minimum_source_weight, 0, candidates)
            candidates = candidates / np.sum(candidates).reshape(-1, 1)
            candidates = np.round(candidates / minimum_source_weight) * minimum_source_weight
            candidates = candidates / np.sum(candidates)
        else:
            candidates = clip_candidates_by_level(
                candidates, idx_to_level, domains, minimum_source_weight, minimum_topic_weight, fixed_topic_weights
            )

        if weight_bounds:
            # need to check for out-of-bounds candidates again, in case normalization caused bounds to be violated.
            if any(
                candidates[0][idx] < lower or candidates[0][idx] > upper
                for idx, (lower, upper) in enumerate(weight_bounds)
            ):
                continue

        selected: tuple[np.ndarray, np.ndarray] = (
            candidates[0],
            np.ones(candidates.shape[1]),
        )

        # if selected is too close to an existing mix from existing_mix_file, discard it
        if existing_mix_file is not None:
            dists = np.linalg.norm(valid_existing_mixes - candidates[0], axis=1)
            if np.any(dists < 0.01):
                logger.info(f"Candidate swarm run is too close to the mixes at {existing_mix_file}, rejecting.")
                continue

        reject = False
        for idx, domain in enumerate(domains):
            domain_tokens = leaf_tokens[domain]
            required_tokens = int(selected[0][idx] * max_tokens)

            repetition = np.ceil(required_tokens / domain_tokens * 1000) / 1000

            if repetition > repetition_factor:
                logger.info(f"Repetition factor {repetition} exceeds maximum {repetition_factor}")
                reject = True
                break

            selected[1][idx] = max(1, repetition)

        if not reject:
            collected_samples.append(selected)

    if len(collected_samples) == 0:
        raise ValueError("No valid samples were generated, please check the configuration!")

    if len(collected_samples) > 10000:
        # when we have a lot of samples, regular sort_and_deduplicate is O(n^2) and takes too long
        deduped = sort_and_deduplicate_with_hash(collected_samples)
    else:
        deduped = sort_and_deduplicate(collected_samples)

    if len(collected_samples) < num_samples_out:
        raise ValueError(
            f"The number of collected samples '{len(collected_samples)}' is less than the required number of samples '{num_samples_out}'!"
        )

    selected_samples = random.sample(deduped, num_samples_out)
    selected_samples = np.stack(selected_samples, axis=0)

    num_nonzero = [len(np.where(selected_samples[i][0] != 0)[0]) for i in range(len(selected_samples))]
    logger.info(f"Number of nonzero domains per swarm run: {num_nonzero}")

    return selected_samples


def sort_and_deduplicate(
    samples: list[tuple[np.ndarray, np.ndarray]], threshold=1e-5
) -> list[tuple[np.ndarray, np.ndarray]]:
    """
    Remove identical configs to avoid duplicated training.
    """
    unique_samples = []
    for sample in tqdm(samples):
        is_duplicate = any(np.allclose(sample[0], unique_sample[0], atol=threshold) for unique_sample in unique_samples)
        if not is_duplicate:
            unique_samples.append(sample)

    logger.info(f"Filtered {len(samples) - len(unique_samples)} duplicate distributions from candidate pool...")
    return unique_samples


def sort_and_deduplicate_with_hash(
    samples: list[tuple[np.ndarray, np.ndarray]], threshold=1e-5
) -> list[tuple[np.ndarray, np.ndarray]]:
    """
    Remove near-identical configs efficiently to avoid duplicated training.
    """
    unique_samples = []
    seen_hashes = set()

    for sample in tqdm(samples):
        vec = sample[0]
        rounded = tuple(np.round(vec / threshold).astype(int))

        if rounded not in seen_hashes:
            seen_hashes.add(rounded)
            unique_samples.append(sample)

    logger.info(f"Filtered {len(samples) - len(unique_samples)} duplicate distributions from candidate pool...")
    return unique_samples
