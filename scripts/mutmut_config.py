"""mutmut's hook for scripts/mutation (copied to the top of the mutation copy, where mutmut looks for it).

A mutant inside the annotation of an annotated assignment (`record: dict | None = None` becoming
`dict & None`) is equivalent by construction: every module here has `from __future__ import annotations`,
so annotations are never evaluated. mutmut 2 already leaves alone bare annotations, parameters' and return
types; this skips the rest of them, so the kill rate counts only changes of behaviour.
"""

_in_annotation = False


def _annotation(node) -> bool:
    parent = node.parent
    return parent is not None and parent.type == "annassign" and parent.children[1] is node


def pre_mutation_ast(context) -> None:
    global _in_annotation
    if context.mutation_id_of_current_index == context.mutation_id and any(map(_annotation, context.stack)):
        _in_annotation = True


def pre_mutation(context) -> None:
    global _in_annotation
    from mutmut import Context, mutate  # not at the top: mutmut imports this file while it is itself imported
    _in_annotation = False
    mutate(Context(source=context.source, mutation_id=context.mutation_id, filename=context.filename))
    context.skip = _in_annotation
