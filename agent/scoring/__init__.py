"""Scoring leads against a campaign's ideal customer profile (see ``agent.scoring.icp``)."""

from agent.scoring.icp import ICP, ICPRule, LeadScore, parse_icp, score_leads

__all__ = ["ICP", "ICPRule", "LeadScore", "parse_icp", "score_leads"]
