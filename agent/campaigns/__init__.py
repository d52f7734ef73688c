"""Campaigns: definitions (code, YAML or JSON), lifecycle, and the triggers that queue their runs."""

from agent.campaigns.manager import BUILTIN_FLOWS, CampaignManager
from agent.campaigns.model import Campaign, CampaignLimits, CampaignStatus, CampaignTemplate, load_campaign

__all__ = ["CampaignManager", "Campaign", "CampaignLimits", "CampaignTemplate", "CampaignStatus",
           "load_campaign", "BUILTIN_FLOWS"]
