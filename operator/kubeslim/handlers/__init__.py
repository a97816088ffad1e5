"""kopf handlers: a thin layer that carries out the planner's decisions.

main.py only wires decorators to the small functions in handle_*.py.
"""
