"""The Registry: registration, lookup, metadata, resolution and plug-in discovery."""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
import unittest
import uuid
from pathlib import Path
from unittest import mock

import agent.builtins as builtins_module
from agent.agents.base import BaseAgent
from agent.agents.lead_search import LeadSearchAgent
from agent.builtins import default_registry
from agent.errors import DuplicateName, InvalidInput, NotFound, RegistryError
from agent.high_level_agents.orchestrators import LeadOrchestrator
from agent.high_level_agents.orchestrators.lead import LeadPayload
from agent.registry import PLUGIN_GROUP, Registry


class EchoAgent(BaseAgent):
    """Echoes its request back.

    A second paragraph that the registry leaves out of the description.
    """

    capabilities = frozenset({"read"})
    version = "2.3.4"

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix


class OtherAgent(BaseAgent):
    """Another agent."""


def word_count(text: str) -> int:
    """Counts the words in a text."""
    return len(text.split())


class RegisterTests(unittest.TestCase):
    def setUp(self):
        self.registry = Registry()

    def test_register_returns_the_object_so_it_can_decorate(self):
        # Given / When a class is registered
        returned = self.registry.register("echo", EchoAgent)

        # Then register hands the class back
        self.assertIs(returned, EchoAgent)

    def test_registered_name_is_contained(self):
        # Given / When a class is registered
        self.registry.register("echo", EchoAgent)

        # Then the registry contains its name
        self.assertIn("echo", self.registry)

    def test_duplicate_name_raises_duplicate_name(self):
        # Given a registered name
        self.registry.register("echo", EchoAgent)

        # When / Then registering it again fails, naming it
        with self.assertRaises(DuplicateName) as caught:
            self.registry.register("echo", OtherAgent)
        self.assertEqual(caught.exception.name, "echo")

    def test_duplicate_name_keeps_the_first_registration(self):
        # Given a registered name and a refused duplicate
        self.registry.register("echo", EchoAgent)
        with self.assertRaises(DuplicateName):
            self.registry.register("echo", OtherAgent)

        # When it is looked up
        found = self.registry.get("echo")

        # Then the original is still there
        self.assertIs(found, EchoAgent)

    def test_replace_true_replaces_a_registration(self):
        # Given a registered name
        self.registry.register("echo", EchoAgent)

        # When it is registered again with replace=True
        self.registry.register("echo", OtherAgent, replace=True)

        # Then the new object is returned by get
        self.assertIs(self.registry.get("echo"), OtherAgent)

    def test_empty_name_is_invalid_input(self):
        # Given / When / Then an empty name is refused, naming the field
        with self.assertRaises(InvalidInput) as caught:
            self.registry.register("  ", EchoAgent)
        self.assertEqual(caught.exception.field, "name")

    def test_unknown_metadata_key_is_invalid_input_naming_it(self):
        # Given / When / Then an unknown metadata key is refused by name
        with self.assertRaises(InvalidInput) as caught:
            self.registry.register("echo", EchoAgent, colour="red")
        self.assertEqual(caught.exception.field, "metadata.colour")

    def test_unknown_metadata_key_registers_nothing(self):
        # Given a refused registration
        with self.assertRaises(InvalidInput):
            self.registry.register("echo", EchoAgent, colour="red")

        # When / Then the name is not registered
        self.assertNotIn("echo", self.registry)

    def test_capability_outside_read_write_send_is_invalid_input(self):
        # Given / When / Then an unknown capability is refused under metadata.capabilities
        with self.assertRaises(InvalidInput) as caught:
            self.registry.register("echo", EchoAgent, capabilities={"read", "fly"})
        self.assertTrue(caught.exception.field.startswith("metadata.capabilities"), caught.exception.field)

    def test_unknown_kind_is_invalid_input(self):
        # Given / When / Then a kind outside orchestrator|agent|tool is refused
        with self.assertRaises(InvalidInput) as caught:
            self.registry.register("echo", EchoAgent, kind="robot")
        self.assertEqual(caught.exception.field, "metadata.kind")


class LookupTests(unittest.TestCase):
    def setUp(self):
        self.registry = Registry()
        self.registry.register("lead_orchestrator", LeadOrchestrator)
        self.registry.register("echo", EchoAgent)

    def test_get_returns_the_registered_class_not_an_instance(self):
        # Given / When a registered class is fetched
        found = self.registry.get("lead_orchestrator")

        # Then it is the class itself
        self.assertIs(found, LeadOrchestrator)

    def test_miss_raises_not_found_which_is_a_lookup_error(self):
        # Given / When / Then a miss is both NotFound and a LookupError
        with self.assertRaises(LookupError) as caught:
            self.registry.get("nope")
        self.assertIsInstance(caught.exception, NotFound)

    def test_miss_suggests_close_names(self):
        # Given / When a misspelt name is looked up
        with self.assertRaises(NotFound) as caught:
            self.registry.get("lead_orchestrater")

        # Then the close name is suggested
        self.assertEqual(caught.exception.suggestions, ["lead_orchestrator"])

    def test_miss_message_mentions_the_suggestion(self):
        # Given / When a misspelt name is looked up
        with self.assertRaises(NotFound) as caught:
            self.registry.get("lead_orchestrater")

        # Then the message a user reads offers the close name
        self.assertIn("lead_orchestrator", str(caught.exception))

    def test_miss_with_nothing_close_suggests_nothing(self):
        # Given / When a name unlike anything registered is looked up
        with self.assertRaises(NotFound) as caught:
            self.registry.get("zzzzzzzz")

        # Then there are no suggestions
        self.assertEqual(caught.exception.suggestions, [])

    def test_miss_is_raised_without_the_key_error_context(self):
        # Given / When a miss
        with self.assertRaises(NotFound) as caught:
            self.registry.get("nope")

        # Then the internal KeyError is not shown as context
        self.assertTrue(caught.exception.__suppress_context__)

    def test_describe_of_a_miss_raises_not_found(self):
        # Given / When / Then describe fails the same way as get
        with self.assertRaises(NotFound):
            self.registry.describe("lead_orchestrater")


class ResolveTests(unittest.TestCase):
    def setUp(self):
        self.registry = Registry()

    def test_resolve_instantiates_a_registered_class(self):
        # Given a registered class
        self.registry.register("echo", EchoAgent)

        # When it is resolved
        instance = self.registry.resolve("echo")

        # Then an instance comes back
        self.assertIsInstance(instance, EchoAgent)

    def test_resolve_caches_the_instance(self):
        # Given a registered class
        self.registry.register("echo", EchoAgent)

        # When it is resolved twice
        first = self.registry.resolve("echo")
        second = self.registry.resolve("echo")

        # Then both are the same instance
        self.assertIs(first, second)

    def test_resolve_with_arguments_builds_a_fresh_instance(self):
        # Given a registered class already resolved once
        self.registry.register("echo", EchoAgent)
        cached = self.registry.resolve("echo")

        # When it is resolved with constructor arguments
        custom = self.registry.resolve("echo", prefix=">> ")

        # Then a new instance is built with them
        self.assertIsNot(custom, cached)
        self.assertEqual(custom.prefix, ">> ")

    def test_resolve_returns_a_registered_instance_as_is(self):
        # Given a registered instance
        instance = EchoAgent(prefix="x")
        self.registry.register("echo", instance)

        # When it is resolved
        resolved = self.registry.resolve("echo")

        # Then it is the very same object
        self.assertIs(resolved, instance)

    def test_replacing_a_class_drops_its_cached_instance(self):
        # Given a class resolved once
        self.registry.register("echo", EchoAgent)
        self.registry.resolve("echo")

        # When the name is replaced by another class
        self.registry.register("echo", OtherAgent, replace=True)

        # Then resolving builds the new class
        self.assertIsInstance(self.registry.resolve("echo"), OtherAgent)


class UnregisterTests(unittest.TestCase):
    def setUp(self):
        self.registry = Registry()

    def test_unregister_removes_the_name(self):
        # Given a registered name
        self.registry.register("echo", EchoAgent)

        # When it is unregistered
        self.registry.unregister("echo")

        # Then it is gone
        with self.assertRaises(NotFound):
            self.registry.get("echo")

    def test_unregister_of_an_unknown_name_raises_not_found(self):
        # Given / When / Then unregistering a miss fails with NotFound
        with self.assertRaises(NotFound):
            self.registry.unregister("echo")

    def test_a_name_can_be_registered_again_after_unregister(self):
        # Given a name registered then unregistered
        self.registry.register("echo", EchoAgent)
        self.registry.unregister("echo")

        # When it is registered again without replace
        self.registry.register("echo", OtherAgent)

        # Then the new registration stands
        self.assertIs(self.registry.get("echo"), OtherAgent)


class ListTests(unittest.TestCase):
    def setUp(self):
        self.registry = Registry()
        self.registry.register("zeta", EchoAgent)
        self.registry.register("lead_orchestrator", LeadOrchestrator)
        self.registry.register("alpha", OtherAgent)
        self.registry.register("word_count", word_count, kind="tool")

    def test_list_returns_every_name_sorted(self):
        # Given / When every name is listed
        names = self.registry.list()

        # Then all come back in order
        self.assertEqual(names, ["alpha", "lead_orchestrator", "word_count", "zeta"])

    def test_list_filters_by_kind(self):
        # Given / When agents only are listed
        names = self.registry.list(kind="agent")

        # Then orchestrators and tools are left out
        self.assertEqual(names, ["alpha", "zeta"])

    def test_list_of_an_empty_kind_is_empty(self):
        # Given / When / Then a kind nobody has lists nothing
        self.assertEqual(Registry().list(kind="orchestrator"), [])


class DescribeTests(unittest.TestCase):
    def setUp(self):
        self.registry = Registry()

    def test_orchestrator_class_declares_its_kind(self):
        # Given / When LeadOrchestrator is registered without metadata
        self.registry.register("lead_orchestrator", LeadOrchestrator)

        # Then its kind comes from the class
        self.assertEqual(self.registry.describe("lead_orchestrator")["kind"], "orchestrator")

    def test_orchestrator_class_declares_its_capabilities(self):
        # Given / When LeadOrchestrator is registered without metadata
        self.registry.register("lead_orchestrator", LeadOrchestrator)

        # Then its capabilities come from the class
        self.assertEqual(self.registry.describe("lead_orchestrator")["capabilities"], ["read"])

    def test_payload_model_becomes_the_input_schema(self):
        # Given / When LeadOrchestrator is registered without metadata
        self.registry.register("lead_orchestrator", LeadOrchestrator)

        # Then its input schema is the payload model's JSON Schema
        self.assertEqual(self.registry.describe("lead_orchestrator")["input_schema"], LeadPayload.model_json_schema())

    def test_class_version_is_used(self):
        # Given / When a class declaring a version is registered
        self.registry.register("echo", EchoAgent)

        # Then describe reports it
        self.assertEqual(self.registry.describe("echo")["version"], "2.3.4")

    def test_description_defaults_to_the_first_docstring_paragraph(self):
        # Given / When a class with a two-paragraph docstring is registered
        self.registry.register("echo", EchoAgent)

        # Then only the first paragraph describes it
        self.assertEqual(self.registry.describe("echo")["description"], "Echoes its request back.")

    def test_explicit_metadata_overrides_class_attributes(self):
        # Given / When a class is registered with explicit metadata
        self.registry.register("echo", EchoAgent, kind="tool", capabilities={"send", "write"}, version="9.0")

        # Then the explicit values win, capabilities sorted
        description = self.registry.describe("echo")
        self.assertEqual(
            (description["kind"], description["capabilities"], description["version"]),
            ("tool", ["send", "write"], "9.0"),
        )

    def test_describe_names_the_registered_object(self):
        # Given / When a class is registered
        self.registry.register("lead_orchestrator", LeadOrchestrator)

        # Then describe gives its name and dotted import path
        description = self.registry.describe("lead_orchestrator")
        self.assertEqual(
            (description["name"], description["object"]),
            ("lead_orchestrator", "agent.high_level_agents.orchestrators.lead.LeadOrchestrator"),
        )

    def test_describe_of_an_instance_names_its_class(self):
        # Given / When an instance is registered
        self.registry.register("echo", EchoAgent())

        # Then describe names the instance's class
        self.assertEqual(self.registry.describe("echo")["object"], f"{__name__}.EchoAgent")

    def test_function_tool_is_described_by_its_own_docstring(self):
        # Given / When a plain function is registered as a tool
        self.registry.register("word_count", word_count, kind="tool")

        # Then its own docstring describes it, not the docstring of `function`
        self.assertEqual(self.registry.describe("word_count")["description"], "Counts the words in a text.")

    def test_function_tool_is_named_by_its_own_import_path(self):
        # Given / When a plain function is registered as a tool
        self.registry.register("word_count", word_count, kind="tool")

        # Then describe names the function, not builtins.function
        self.assertEqual(self.registry.describe("word_count")["object"], f"{__name__}.word_count")

    def test_limits_and_output_schema_are_kept(self):
        # Given / When limits and an output schema are given
        self.registry.register("echo", EchoAgent, limits={"rate_per_minute": 60},
                               output_schema={"type": "object"})

        # Then describe reports them
        description = self.registry.describe("echo")
        self.assertEqual(
            (description["limits"], description["output_schema"]),
            ({"rate_per_minute": 60}, {"type": "object"}),
        )


PLUGIN_SOURCE = '''
from agent.agents.base import BaseAgent


class XyzAgent(BaseAgent):
    """A third-party agent."""

    capabilities = frozenset({"read"})


def xyz_tool(text):
    """A third-party tool."""
    return text


def setup(registry):
    registry.register("xyz_tool", xyz_tool, kind="tool")
    registry.register("xyz_other", XyzAgent, version="1.0")


NOT_A_PLUGIN = 42
'''


class PluginInstaller:
    """Installs plug-ins as real distributions (a ``.dist-info`` on ``sys.path``)."""

    group: str

    def install(self, module_source: str, entry_points: dict[str, str]) -> str:
        """Install a one-module distribution; return the module's name."""
        module = f"myplugin_xyz_{uuid.uuid4().hex[:8]}"
        root = Path(tempfile.mkdtemp(prefix="agent-plugin-"))
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        (root / f"{module}.py").write_text(module_source, encoding="utf-8")
        info = root / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n", encoding="utf-8")
        lines = [f"[{self.group}]"] + [f"{name} = {module}:{target}" for name, target in entry_points.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        sys.path.insert(0, str(root))
        importlib.invalidate_caches()
        self.addCleanup(self.uninstall, str(root), module)
        return module

    @staticmethod
    def uninstall(root: str, module: str) -> None:
        if root in sys.path:
            sys.path.remove(root)
        sys.modules.pop(module, None)
        importlib.invalidate_caches()


BROKEN_SOURCE = "raise ImportError('missing dependency: frobnicate')\n"

FAILING_SETUP_SOURCE = '''
def setup(registry):
    registry.register("half_done_xyz", object())
    raise RuntimeError("setup exploded")
'''


class DiscoverTests(PluginInstaller, unittest.TestCase):
    """Plug-ins installed as real distributions (a ``.dist-info`` on ``sys.path``)."""

    def setUp(self):
        # A group of our own, so nothing else installed is picked up
        self.group = f"agent.plugins.test_{uuid.uuid4().hex[:8]}"

    def test_default_group_is_agent_plugins(self):
        # Given / When / Then the entry-point group third parties use
        self.assertEqual(PLUGIN_GROUP, "agent.plugins")

    def test_class_entry_point_is_registered_under_the_entry_point_name(self):
        # Given an installed plug-in whose entry point names a BaseAgent subclass
        module = self.install(PLUGIN_SOURCE, {"xyz_agent": "XyzAgent"})
        registry = Registry()

        # When plug-ins are discovered
        registry.discover(self.group)

        # Then the class is registered, with its own metadata
        self.assertEqual(
            (registry.get("xyz_agent").__module__, registry.describe("xyz_agent")["capabilities"]),
            (module, ["read"]),
        )

    def test_setup_entry_point_is_called_with_the_registry(self):
        # Given an installed plug-in whose entry point names a setup function
        self.install(PLUGIN_SOURCE, {"xyz_setup": "setup"})
        registry = Registry()

        # When plug-ins are discovered
        registry.discover(self.group)

        # Then what setup registered is there, and the setup function itself is not
        self.assertEqual(registry.list(), ["xyz_other", "xyz_tool"])

    def test_discover_returns_every_name_it_added(self):
        # Given a plug-in with a class entry point and a setup entry point
        self.install(PLUGIN_SOURCE, {"xyz_agent": "XyzAgent", "xyz_setup": "setup"})
        registry = Registry()

        # When plug-ins are discovered
        added = registry.discover(self.group)

        # Then every added name is reported
        self.assertEqual(sorted(added), ["xyz_agent", "xyz_other", "xyz_tool"])

    def test_discover_uses_the_agent_plugins_group_by_default(self):
        # Given a plug-in installed in the default group under a unique name
        self.group = PLUGIN_GROUP
        name = f"xyz_agent_{uuid.uuid4().hex[:8]}"
        self.install(PLUGIN_SOURCE, {name: "XyzAgent"})
        registry = Registry()

        # When plug-ins are discovered without naming a group
        registry.discover()

        # Then the plug-in is registered
        self.assertIn(name, registry)

    def test_plugin_whose_import_fails_raises_registry_error_naming_it(self):
        # Given an installed plug-in whose module raises on import
        self.install(BROKEN_SOURCE, {"broken_xyz": "Anything"})

        # When / Then discovery fails with the project's error, naming the plug-in
        with self.assertRaises(RegistryError) as caught:
            Registry().discover(self.group)
        self.assertIn("broken_xyz", str(caught.exception))

    def test_plugin_import_failure_keeps_the_original_cause(self):
        # Given an installed plug-in whose module raises on import
        self.install(BROKEN_SOURCE, {"broken_xyz": "Anything"})

        # When discovery fails
        with self.assertRaises(RegistryError) as caught:
            Registry().discover(self.group)

        # Then the import error is chained as the cause
        self.assertIsInstance(caught.exception.__cause__, ImportError)

    def test_entry_point_that_is_not_a_plugin_raises_registry_error(self):
        # Given an entry point naming a plain integer
        self.install(PLUGIN_SOURCE, {"bad_xyz": "NOT_A_PLUGIN"})

        # When / Then discovery refuses it by name
        with self.assertRaises(RegistryError) as caught:
            Registry().discover(self.group)
        self.assertIn("bad_xyz", str(caught.exception))

    def test_plugin_clashing_with_a_registered_name_raises_duplicate_name(self):
        # Given a registry already holding the plug-in's name
        self.install(PLUGIN_SOURCE, {"echo": "XyzAgent"})
        registry = Registry()
        registry.register("echo", EchoAgent)

        # When / Then discovery refuses to overwrite it silently
        with self.assertRaises(DuplicateName):
            registry.discover(self.group)

    def test_strict_discovery_raises_registry_error_naming_the_failing_plugin(self):
        # Given an installed plug-in whose module raises on import
        self.install(BROKEN_SOURCE, {"broken_xyz": "Anything"})

        # When / Then strict discovery (the default, asked for explicitly) fails, naming it
        with self.assertRaises(RegistryError) as caught:
            Registry().discover(self.group, strict=True)
        self.assertIn("broken_xyz", str(caught.exception))

    def test_lenient_discovery_skips_a_plugin_whose_import_fails_and_loads_the_others(self):
        # Given a plug-in that cannot be imported and one that can
        self.install(BROKEN_SOURCE, {"broken_xyz": "Anything"})
        self.install(PLUGIN_SOURCE, {"xyz_agent": "XyzAgent"})
        registry = Registry()

        # When plug-ins are discovered leniently
        with self.assertLogs("agent.registry", level="WARNING"):
            added = registry.discover(self.group, strict=False)

        # Then the working plug-in is registered and the broken one is not
        self.assertEqual((added, registry.list()), (["xyz_agent"], ["xyz_agent"]))

    def test_lenient_discovery_logs_the_skipped_plugin_by_name(self):
        # Given a plug-in that cannot be imported
        self.install(BROKEN_SOURCE, {"broken_xyz": "Anything"})

        # When plug-ins are discovered leniently
        with self.assertLogs("agent.registry", level="WARNING") as captured:
            Registry().discover(self.group, strict=False)

        # Then one warning names the plug-in and the reason
        self.assertEqual(len(captured.records), 1)
        self.assertIn("broken_xyz", captured.output[0])
        self.assertIn("frobnicate", captured.output[0])

    def test_lenient_discovery_skips_a_plugin_whose_setup_fails_leaving_nothing_behind(self):
        # Given a plug-in whose setup registers a name and then raises, and a working plug-in
        self.install(FAILING_SETUP_SOURCE, {"half_xyz": "setup"})
        self.install(PLUGIN_SOURCE, {"xyz_agent": "XyzAgent"})
        registry = Registry()

        # When plug-ins are discovered leniently
        with self.assertLogs("agent.registry", level="WARNING") as captured:
            registry.discover(self.group, strict=False)

        # Then only the working plug-in is registered, and the failure was logged by name
        self.assertEqual(registry.list(), ["xyz_agent"])
        self.assertIn("half_xyz", captured.output[0])

    def test_lenient_discovery_skips_a_plugin_clashing_with_a_registered_name(self):
        # Given a registry already holding the plug-in's name
        self.install(PLUGIN_SOURCE, {"echo": "XyzAgent"})
        registry = Registry()
        registry.register("echo", EchoAgent)

        # When plug-ins are discovered leniently
        with self.assertLogs("agent.registry", level="WARNING") as captured:
            added = registry.discover(self.group, strict=False)

        # Then the first registration stands and the clash is logged
        self.assertEqual((added, registry.get("echo")), ([], EchoAgent))
        self.assertIn("echo", captured.output[0])

    def test_discover_of_an_empty_group_adds_nothing(self):
        # Given a group no installed distribution uses
        registry = Registry()

        # When plug-ins are discovered
        added = registry.discover(self.group)

        # Then nothing was added
        self.assertEqual((added, registry.list()), ([], []))


class DefaultRegistryTests(unittest.TestCase):
    def test_default_registry_holds_the_builtins(self):
        # Given / When the process-wide registry
        names = default_registry().list()

        # Then every built-in is registered
        self.assertLessEqual(
            {"lead_search", "suppression_gate", "outbox", "lead_orchestrator", "delivery_orchestrator"},
            set(names),
        )

    def test_default_registry_lists_both_orchestrators_as_orchestrators(self):
        # Given / When the orchestrators of the process-wide registry
        names = default_registry().list(kind="orchestrator")

        # Then both built-in orchestrators are there
        self.assertLessEqual({"lead_orchestrator", "delivery_orchestrator"}, set(names))

    def test_default_registry_is_made_once(self):
        # Given / When the default registry is asked for twice
        first = default_registry()
        second = default_registry()

        # Then it is the same registry
        self.assertIs(first, second)


class FailingSetupPluginTest(unittest.TestCase):
    def test_a_setup_function_that_raises_becomes_a_registry_error_and_registers_nothing(self) -> None:
        # Given: an entry point whose setup registers one name and then fails
        from importlib.metadata import EntryPoint
        from unittest import mock

        from agent.errors import RegistryError
        from agent.registry import Registry

        def setup(registry: Registry) -> None:
            registry.register("half_done", object())
            raise RuntimeError("boom")

        ep = mock.Mock(spec=EntryPoint)
        ep.name, ep.value, ep.load.return_value = "broken", "broken:setup", setup
        registry = Registry()
        # When
        with mock.patch("agent.registry.entry_points", return_value=[ep]):
            with self.assertRaises(RegistryError) as caught:
                registry.discover()
        # Then
        self.assertIn("broken", str(caught.exception))
        self.assertNotIn("half_done", registry)


class DefaultRegistryPluginTests(PluginInstaller, unittest.TestCase):
    """The process-wide registry survives bad plug-ins in the real ``agent.plugins`` group."""

    def setUp(self):
        self.group = PLUGIN_GROUP
        # A fresh default registry for this test; the cached one comes back afterwards
        patcher = mock.patch.object(builtins_module, "_default", None)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_broken_and_clashing_plugins_leave_the_builtins_and_other_plugins_working(self):
        # Given an unimportable plug-in, one clashing with a built-in name, and a working one
        good = f"xyz_agent_{uuid.uuid4().hex[:8]}"
        self.install(BROKEN_SOURCE, {f"broken_{uuid.uuid4().hex[:8]}": "Anything"})
        self.install(PLUGIN_SOURCE, {"lead_search": "XyzAgent"})
        self.install(PLUGIN_SOURCE, {good: "XyzAgent"})

        # When the default registry is built
        with self.assertLogs("agent.registry", level="WARNING") as captured:
            registry = default_registry()

        # Then the built-in keeps its name, the working plug-in is there, both failures are logged
        self.assertIs(registry.get("lead_search"), LeadSearchAgent)
        self.assertIn(good, registry)
        self.assertEqual(len(captured.records), 2)

    def test_an_orchestrator_can_be_built_despite_a_broken_plugin(self):
        # Given an unimportable plug-in
        self.install(BROKEN_SOURCE, {f"broken_{uuid.uuid4().hex[:8]}": "Anything"})

        # When an orchestrator is built on the default registry
        with self.assertLogs("agent.registry", level="WARNING"):
            orchestrator = LeadOrchestrator()

        # Then it has the built-ins to work with
        self.assertIn("lead_search", orchestrator.registry)


if __name__ == "__main__":
    unittest.main()
