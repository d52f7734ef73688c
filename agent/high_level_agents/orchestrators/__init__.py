"""Domain orchestrators and the Registry they are resolved through."""

from agent.high_level_agents.orchestrators.base import BaseOrchestrator
from agent.high_level_agents.orchestrators.campaign import CampaignOrchestrator
from agent.high_level_agents.orchestrators.delivery import DeliveryOrchestrator
from agent.high_level_agents.orchestrators.lead import LeadOrchestrator
from agent.high_level_agents.orchestrators.outreach import OutreachOrchestrator
from agent.high_level_agents.orchestrators.reply import ReplyOrchestrator
from agent.registry import Registry

__all__ = ["BaseOrchestrator", "LeadOrchestrator", "DeliveryOrchestrator", "OutreachOrchestrator",
           "CampaignOrchestrator", "ReplyOrchestrator", "Registry"]
