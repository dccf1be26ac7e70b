"""The app's modules import each other without a cycle: the graph of their imports, read from
the source (ast, nothing imported), those inside functions included, is a DAG. A cycle makes a
module's import order matter and a change in one file break another's start-up (an
8-module cycle once ran through utils.py's `perturb` importing viewer)."""
import ast
import os

from conftest import ROOT


def app_modules():
    """{name: path} of the .py files at the repository's top level."""
    return {name[:-3]: os.path.join(ROOT, name) for name in os.listdir(ROOT)
            if name.endswith('.py')}


def imports(path, modules, module_level_only):
    """The names in `modules` that the file at path imports (absolute imports; with
    module_level_only, not those inside a function body, which run only when it is called)."""
    found = set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.Lambda))
            if module_level_only and in_function:
                pass  # runs only when the function is called
            elif isinstance(child, ast.Import):
                found.update(alias.name.split('.')[0] for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.add(child.module.split('.')[0])
            visit(child, inner)
    with open(path) as f:
        visit(ast.parse(f.read(), path), False)
    return found & set(modules)


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def import_graph(module_level_only):
    modules = app_modules()
    return {name: imports(path, modules, module_level_only) for name, path in modules.items()}


def test_no_import_cycle_at_module_level():
    assert cycles(import_graph(module_level_only=True)) == []


def test_no_import_cycle_even_through_imports_inside_functions():
    assert cycles(import_graph(module_level_only=False)) == []


def test_the_cycle_check_finds_a_cycle():
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}, 'e': {'e'}}
    assert cycles(graph) == [['a', 'b', 'c'], ['e']]
    # the repository's graph is read, imports inside functions apart: utils loads compat
    # (Keras) only in the function that downloads MNIST
    assert 'compat' in import_graph(True)['capsulenet']
    assert 'compat' in import_graph(False)['utils'] and 'compat' not in import_graph(True)['utils']
