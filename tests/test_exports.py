"""The public surface stays honest: ``__all__`` lists what is exported, and only that."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import unittest
from pathlib import Path

import agent
import agent.errors
import agent.high_level_agents.orchestrators as orchestrators
from agent.errors import AgentError

# Modules whose ``__all__`` this suite keeps honest.
CORE_MODULES = ("agent.envelope", "agent.registry", "agent.errors", "agent.builtins")


def _exported_from_agent_modules() -> set[str]:
    """Public attributes of ``agent`` that were defined in an ``agent.*`` module (submodules excluded)."""
    names = set()
    for name, value in vars(agent).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        module = getattr(value, "__module__", None) or ""
        if module == "agent" or module.startswith("agent."):
            names.add(name)
    return names


class TopLevelExportsTests(unittest.TestCase):
    def test_every_name_in_all_is_an_attribute_of_agent(self):
        # Given / When the names agent.__all__ promises
        missing = [name for name in agent.__all__ if not hasattr(agent, name)]

        # Then each one can be imported from agent
        self.assertEqual(missing, [])

    def test_all_has_no_duplicates(self):
        # Given / When agent.__all__
        duplicates = sorted({name for name in agent.__all__ if agent.__all__.count(name) > 1})

        # Then every name appears once
        self.assertEqual(duplicates, [])

    def test_every_public_name_imported_from_agent_modules_is_in_all(self):
        # Given the public names agent/__init__.py imports from agent.* modules
        imported = _exported_from_agent_modules()

        # When / Then none is left out of __all__
        self.assertEqual(sorted(imported - set(agent.__all__)), [])

    def test_all_lists_only_public_names(self):
        # Given / When agent.__all__
        private = [name for name in agent.__all__ if name.startswith("_")]

        # Then it only lists public names
        self.assertEqual(private, [])

    def test_envelope_helpers_are_exported(self):
        # Given / When / Then the envelope contract's helpers are importable from agent
        self.assertLessEqual(
            {"make_envelope", "validate_envelope", "record_hash", "envelope_json_schema"}, set(agent.__all__)
        )

    def test_registry_and_orchestrators_are_exported(self):
        # Given / When / Then the registry and the orchestrators are importable from agent
        self.assertLessEqual(
            {"Registry", "BaseOrchestrator", "LeadOrchestrator", "DeliveryOrchestrator"}, set(agent.__all__)
        )

    def test_every_error_is_exported(self):
        # Given / When the error tree's names
        errors = set(agent.errors.__all__)

        # Then all of them are importable from agent
        self.assertEqual(sorted(errors - set(agent.__all__)), [])

    def test_version_matches_the_installed_distribution(self):
        # Given / When the installed distribution's version
        installed = importlib.metadata.version("agent-sdr")

        # Then agent.__version__ agrees
        self.assertEqual(agent.__version__, installed)

    def test_package_ships_py_typed(self):
        # Given / When the package directory
        marker = Path(agent.__file__).with_name("py.typed")

        # Then it declares itself typed
        self.assertTrue(marker.is_file())


class OrchestratorsPackageExportsTests(unittest.TestCase):
    def test_orchestrators_package_exports_exactly_the_orchestrators_and_registry(self):
        # Given / When the orchestrators package's __all__
        exported = set(orchestrators.__all__)

        # Then it is exactly the orchestrators and the Registry
        self.assertEqual(exported, {"BaseOrchestrator", "LeadOrchestrator", "DeliveryOrchestrator",
                                    "OutreachOrchestrator", "CampaignOrchestrator", "ReplyOrchestrator", "Registry"})

    def test_orchestrators_package_names_are_the_top_level_objects(self):
        # Given / When each name the orchestrators package exports
        mismatched = [name for name in orchestrators.__all__ if getattr(orchestrators, name) is not getattr(agent, name)]

        # Then it is the same object agent exports
        self.assertEqual(mismatched, [])


class CoreModuleExportsTests(unittest.TestCase):
    def test_every_name_in_a_core_module_all_exists(self):
        # Given / When each core module's __all__
        missing = [
            f"{module_name}.{name}"
            for module_name in CORE_MODULES
            for name in importlib.import_module(module_name).__all__
            if not hasattr(importlib.import_module(module_name), name)
        ]

        # Then every listed name is defined
        self.assertEqual(missing, [])


class ErrorTreeTests(unittest.TestCase):
    def test_every_error_subclasses_agent_error(self):
        # Given / When the classes agent.errors exports
        outside = [
            name for name in agent.errors.__all__
            if not (inspect.isclass(getattr(agent.errors, name)) and issubclass(getattr(agent.errors, name), AgentError))
        ]

        # Then each one is rooted at AgentError
        self.assertEqual(outside, [])

    def test_every_error_class_defined_in_errors_is_in_all(self):
        # Given the exception classes defined in agent.errors
        defined = {
            name for name, value in vars(agent.errors).items()
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == "agent.errors"
        }

        # When / Then none is missing from __all__
        self.assertEqual(sorted(defined - set(agent.errors.__all__)), [])

    def test_error_codes_are_unique(self):
        # Given / When the code of every exported error
        codes = [getattr(agent.errors, name).code for name in agent.errors.__all__]

        # Then no two errors share a code
        self.assertEqual(len(codes), len(set(codes)), codes)

    def test_not_found_is_also_a_lookup_error(self):
        # Given / When / Then callers catching LookupError also catch registry misses
        self.assertTrue(issubclass(agent.errors.NotFound, LookupError))

    def test_error_to_dict_is_an_envelope_error_item(self):
        # Given an error raised by the package
        error = agent.errors.EnvelopeError("records[0].provenance", "field required")

        # When it is turned into an envelope errors item
        item = error.to_dict()

        # Then it carries its code and message
        self.assertEqual(item, {"code": "invalid_envelope", "message": "records[0].provenance: field required"})


if __name__ == "__main__":
    unittest.main()
