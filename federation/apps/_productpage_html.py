"""productpage's HTML: the parts of bookinfo's page that the Istio tasks (and our tests) read.

Kept from the original: the title ``Simple Bookstore App``, ``Reviews served by: <pod>``,
a ``<font color="black|red">`` per full star (Bootstrap's star glyphs), the error texts.
Every value that comes from a request or a service is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

_HEAD = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>Simple Bookstore App</title>
</head>
<body>
"""
_TAIL = "</body>\n</html>\n"


def render_index() -> str:
    return (_HEAD + "<h3>Hello! This is a simple bookstore application consisting of three services as shown"
            " below</h3>\n<p><a href=\"productpage?u=normal\">Normal user</a></p>\n"
            "<p><a href=\"productpage?u=test\">Test user</a></p>\n" + _TAIL)


def _user_bar(user: str) -> str:
    if user:
        return (f'<nav><span class="user">{escape(user)}</span> '
                '<a href="logout">sign out</a></nav>\n')
    return ('<nav><form method="post" action="login" name="login_form">'
            '<input type="text" name="username" placeholder="Username">'
            '<input type="password" name="passwd" placeholder="Password">'
            '<button type="submit">Sign in</button></form></nav>\n')


def _details(status: int, details: dict[str, Any]) -> str:
    if status != 200:
        return (f'<p class="error">Error fetching product details! {escape(str(details.get("error", "")))}</p>\n')
    rows = "".join(f"<dt>{escape(label)}:</dt><dd>{escape(str(details.get(key, '')))}</dd>"
                   for label, key in (("Type", "type"), ("Pages", "pages"), ("Publisher", "publisher"),
                                      ("Language", "language"), ("ISBN-10", "ISBN-10"), ("ISBN-13", "ISBN-13")))
    return f'<h4 class="text-center text-primary">Book Details</h4>\n<dl>{rows}</dl>\n'


def _stars(rating: dict[str, Any]) -> str:
    stars = rating.get("stars")
    if isinstance(stars, int):
        color = escape(str(rating.get("color", "black")))
        full = f'<font color="{color}"><span class="glyphicon glyphicon-star"></span></font>' * max(0, stars)
        empty = '<span class="glyphicon glyphicon-star-empty"></span>' * max(0, 5 - stars)
        return f'<p class="stars">{full}{empty}</p>\n'
    if rating.get("error"):
        return f'<p class="rating-error">{escape(str(rating["error"]))}</p>\n'
    return ""


def _reviews(status: int, reviews: dict[str, Any]) -> str:
    if status != 200:
        return f'<p class="error">Error fetching product reviews! {escape(str(reviews.get("error", "")))}</p>\n'
    parts = ['<h4 class="text-center text-primary">Book Reviews</h4>\n']
    for review in reviews.get("reviews", []):
        parts.append(f'<blockquote><p>{escape(str(review.get("text", "")))}</p>'
                     f'<small>{escape(str(review.get("reviewer", "")))}</small>\n')
        if isinstance(review.get("rating"), dict):
            parts.append(_stars(review["rating"]))
        parts.append("</blockquote>\n")
    served = escape(str(reviews.get("podname", "")))
    cluster = reviews.get("clustername")
    if cluster and cluster != "null":
        served += f" on cluster {escape(str(cluster))}"
    if reviews.get("version"):
        served += f' (<span class="version">{escape(str(reviews["version"]))}</span>)'
    parts.append(f'<p class="served-by">Reviews served by: {served}</p>\n')
    return "".join(parts)


def render_productpage(product: dict[str, Any], details: tuple[int, Any], reviews: tuple[int, Any],
                       user: str) -> str:
    return (_HEAD + _user_bar(user)
            + f'<h1 class="text-center text-primary">{escape(product["title"])}</h1>\n'
            + f"<p>Summary: {product['descriptionHtml']}</p>\n"  # trusted: our own constant
            + _details(*details) + _reviews(*reviews) + _TAIL)
