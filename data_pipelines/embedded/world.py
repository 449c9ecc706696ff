"""The embedded world: coloured shapes in a 2x2 grid, rendered with PIL, and the text generated about them.

Every function takes a numpy Generator, so the caller decides seeding; nothing here reads global state.
Each object sits in its own grid cell, so positions ("on the left", "in the top right") are unambiguous
whenever a question is asked, and the centre pixel of every object is exactly its colour (no antialiasing).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
SIZES = ("small", "large")
CELLS = ("top left", "top right", "bottom left", "bottom right")  # row-major 2x2 grid
SIDES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
BACKGROUND = (28, 28, 36)
RADIUS = {"small": 0.10, "large": 0.18}  # fraction of the image side
NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
           "sixteen seventeen eighteen nineteen twenty").split()


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    cell: int  # index into CELLS
    jx: float  # jitter in [-1, 1], scaled by the free room in the cell at render time
    jy: float

    @property
    def sides(self) -> tuple[str, str]:
        return ("top" if self.cell < 2 else "bottom", "left" if self.cell % 2 == 0 else "right")

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"

    def geometry(self, image_size: int) -> tuple[float, float, float]:
        """Centre x, centre y and radius in pixels; the shape stays inside its cell with a margin."""
        half, r = image_size / 4, RADIUS[self.size] * image_size
        room = max(0.0, half - r - max(1.0, 0.03 * image_size))
        row, col = divmod(self.cell, 2)
        return (2 * col + 1) * half + self.jx * room, (2 * row + 1) * half + self.jy * room, r


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    def on_side(self, side: str) -> list[Obj]:
        return [o for o in self.objects if side in o.sides]

    def to_json(self, image_size: int) -> list[dict]:
        """Per-object metadata with pixel geometry (what tests and evaluators check answers against)."""
        out = []
        for o in self.objects:
            cx, cy, r = o.geometry(image_size)
            out.append({"shape": o.shape, "color": o.color, "size": o.size, "position": CELLS[o.cell],
                        "center": [round(cx, 2), round(cy, 2)], "radius": round(r, 2)})
        return out


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def sample_scene(rng: np.random.Generator) -> Scene:
    """1 to 4 objects in distinct cells; colour, shape and size independent (duplicates allowed)."""
    count = int(rng.integers(1, 5))
    cells = sorted(int(c) for c in rng.choice(4, size=count, replace=False))
    colors = list(COLORS)
    return Scene(tuple(Obj(_pick(rng, SHAPES), _pick(rng, colors), _pick(rng, SIZES), c,
                           float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))) for c in cells))


def render(scene: Scene, image_size: int = 64) -> Image.Image:
    """Draw the scene as an RGB image (hard edges, so interior pixels are exactly the object colour)."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        cx, cy, r = o.geometry(image_size)
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            s = 0.85 * r  # similar area to the circle
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
        elif o.shape == "star":
            ang = -np.pi / 2 + np.arange(10) * np.pi / 5
            rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
            draw.polygon([(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(rad, ang)], fill=fill)
        else:  # cross
            t = 0.35 * r
            draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
            draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # Pillow writes no timestamps: same pixels -> same bytes
    return buf.getvalue()


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _where(scene: Scene, o: Obj) -> str:
    """Shortest unambiguous position: "on the left" when it is alone on that side, else the cell."""
    if len(scene.objects) > 1:
        for side in o.sides[::-1]:  # prefer left/right, as people do
            if len(scene.on_side(side)) == 1:
                return SIDES[side]
    return "in the " + CELLS[o.cell]


def caption(scene: Scene) -> str:
    """One-line caption, e.g. "a large red circle on the left and a small blue square on the right."."""
    return _join([f"a {o.phrase} {_where(scene, o)}" for o in scene.objects]) + "."


# Image classes for vision pretraining of the tower (data_pipelines/image_labels.py): each shape, each
# colour-shape pair and each size present; multi-label, as a scene holds up to four objects. Each object's
# box carries its own three (regions), for heads that classify every token.
CLASSES: tuple[str, ...] = SHAPES + tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES) + SIZES


def _classes_of(o: Obj) -> set[str]:
    return {o.shape, f"{o.color} {o.shape}", o.size}


def labels(scene: Scene) -> list[str]:
    """The scene's classes (names in CLASSES), each once, in CLASSES order."""
    present = set().union(*(_classes_of(o) for o in scene.objects))
    return [name for name in CLASSES if name in present]


def regions(scene: Scene, image_size: int) -> list[dict]:
    """Each object's box [x0, y0, x1, y1] in pixels of the rendered image (its centre +- its radius) and
    its classes, in CLASSES order."""
    out = []
    for o in scene.objects:
        cx, cy, r = o.geometry(image_size)
        names = _classes_of(o)
        out.append({"box": [round(cx - r, 2), round(cy - r, 2), round(cx + r, 2), round(cy + r, 2)],
                    "labels": [name for name in CLASSES if name in names]})
    return out


def describe(scene: Scene) -> str:
    """Longer description: the count, then one sentence per object."""
    n = len(scene.objects)
    head = f"There {'is' if n == 1 else 'are'} {NUMBERS[n]} {'shape' if n == 1 else 'shapes'} in the image."
    return " ".join([head] + [f"A {o.phrase} is in the {CELLS[o.cell]}." for o in scene.objects])


# Closed answer sets per question type: evaluation accuracy is compared with 1 / len(choices).
CHOICES: dict[str, list[str]] = {
    "color_of_shape": list(COLORS), "color_at_side": list(COLORS), "shape_of_color": list(SHAPES),
    "shape_at_side": list(SHAPES), "count_all": ["1", "2", "3", "4"], "count_shape": ["0", "1", "2", "3", "4"],
    "exists": ["yes", "no"], "where": list(CELLS), "size_of": list(SIZES),
}
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color_of_shape": ("What color is the {shape}?", "What is the color of the {shape}?"),
    "color_at_side": ("What color is the shape {side}?", "Which color is the shape {side}?"),
    "shape_of_color": ("What shape is the {color} object?", "Which shape is {color}?"),
    "shape_at_side": ("Which shape is {side}?", "What shape is {side}?"),
    "count_all": ("How many shapes are there?", "How many objects are in the image?"),
    "count_shape": ("How many {plural} are there?", "How many {plural} can you see?"),
    "exists": ("Is there a {color} {shape}?", "Is there a {color} {shape} in the image?"),
    "where": ("Where is the {color} {shape}?", "In which part of the image is the {color} {shape}?"),
    "size_of": ("Is the {shape} small or large?", "Is the {shape} large or small?"),
    "describe": ("Describe the image briefly.", "What is in the image?"),
    "describe_detail": ("Describe the image in detail.", "Describe every shape in the image."),
}


def image_questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """Every well-posed question about the scene as (type, question, answer); referents are unique."""
    objs, qs = scene.objects, []

    def ask(kind: str, answer: str, **kw) -> None:
        qs.append((kind, _pick(rng, QUESTION_TEMPLATES[kind]).format(**kw), answer))

    for shape in sorted({o.shape for o in objs}):
        same = [o for o in objs if o.shape == shape]
        if len(same) == 1:
            ask("color_of_shape", same[0].color, shape=shape)
            ask("size_of", same[0].size, shape=shape)
    for color in sorted({o.color for o in objs}):
        same = [o for o in objs if o.color == color]
        if len(same) == 1:
            ask("shape_of_color", same[0].shape, color=color)
    for side, phrase in SIDES.items():
        there = scene.on_side(side)
        if len(there) == 1 and len(objs) > 1:
            ask("shape_at_side", there[0].shape, side=phrase)
            ask("color_at_side", there[0].color, side=phrase)
    ask("count_all", str(len(objs)))
    absent = [s for s in SHAPES if all(o.shape != s for o in objs)]
    for shape in sorted({o.shape for o in objs}) + ([_pick(rng, absent)] if absent else []):
        ask("count_shape", str(sum(o.shape == shape for o in objs)), plural=PLURALS[shape])
    present = {(o.color, o.shape) for o in objs}
    o = _pick(rng, objs)  # one yes and one no keeps "exists" balanced
    ask("exists", "yes", color=o.color, shape=o.shape)
    missing = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    c, s = missing[int(rng.integers(len(missing)))]
    ask("exists", "no", color=c, shape=s)
    for o in objs:
        if sum((p.color, p.shape) == (o.color, o.shape) for p in objs) == 1:
            ask("where", CELLS[o.cell], color=o.color, shape=o.shape)
    ask("describe", caption(scene)[0].upper() + caption(scene)[1:])
    ask("describe_detail", describe(scene))
    return qs


def image_conversation(scene: Scene, rng: np.random.Generator, turns: tuple[int, int] = (1, 3)
                       ) -> list[dict[str, str]]:
    """`turns` = (fewest, most) question-answer turns about the scene, distinct questions in random order;
    "<image>\\n" opens the first human turn and appears nowhere else. Several questions of one image in one
    conversation is how LLaVA-1.5's mix665k holds VQAv2 and GQA: one image pass supervises several answers."""
    qs = image_questions(scene, rng)
    asked = [qs[int(i)] for i in rng.permutation(len(qs))[: int(rng.integers(turns[0], turns[1] + 1))]]
    conv = []
    for i, (_, q, a) in enumerate(asked):
        conv += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    return conv


def eval_question(scene: Scene, rng: np.random.Generator, turn: int) -> dict:
    """One closed-set question; `turn` rotates the preferred type so every type is represented."""
    qs = [q for q in image_questions(scene, rng) if q[0] in CHOICES]
    kinds = list(CHOICES)
    for k in range(len(kinds)):
        kind = kinds[(turn + k) % len(kinds)]
        found = [q for q in qs if q[0] == kind]
        if found:
            _, q, a = _pick(rng, found)
            return {"type": kind, "question": q, "answer": a, "choices": CHOICES[kind],
                    "chance": 1 / len(CHOICES[kind])}
    raise AssertionError("count_all is always askable")


# ---- Text without images: image-free chat turns (LLaVA mixes these in) and the pretraining corpus ----
MIXES = {("red", "yellow"): "orange", ("blue", "yellow"): "green", ("red", "blue"): "purple",
         ("red", "white"): "pink", ("black", "white"): "gray", ("blue", "white"): "light blue"}
THINGS = {"grass": "green", "the sky": "blue", "snow": "white", "a banana": "yellow", "a lemon": "yellow",
          "a tomato": "red", "a plum": "purple", "a carrot": "orange", "milk": "white", "a leaf": "green"}
SIDE_COUNT = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
WORDS = list(COLORS) + list(SHAPES) + ["ball", "box", "kite", "cup", "tree", "house", "small", "large"]
NAMES = {"Tom": "he", "Ann": "she", "Sam": "he", "Mia": "she", "Leo": "he", "Zoe": "she"}
TOYS = ("ball", "box", "kite", "block", "cup", "hat")
PLACES = ("park", "garden", "beach", "school", "market")


def _arith(rng: np.random.Generator) -> list[tuple[str, str]]:
    a, b, c = (int(x) for x in rng.integers(0, 10, 3))
    op = _pick(rng, ("plus", "minus", "times"))
    a, b = (max(a, b), min(a, b)) if op == "minus" else (a, b)
    ans = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    turns = [(f"What is {a} {op} {b}?", str(ans))]
    if op == "plus" and rng.random() < 0.5:  # a follow-up that needs the previous turn
        turns.append((f"And if you add {c} more?", str(ans + c)))
    return turns


def _mix(rng: np.random.Generator) -> list[tuple[str, str]]:
    (a, b), c = list(MIXES.items())[int(rng.integers(len(MIXES)))]
    a, b = (b, a) if rng.random() < 0.5 else (a, b)
    return [(f"What color do you get when you mix {a} and {b}?", c)]


def _spell(rng: np.random.Generator) -> list[tuple[str, str]]:
    w = _pick(rng, WORDS)
    if rng.random() < 0.5:
        return [(f"How do you spell {w}?", "-".join(w))]
    return [(f"How many letters are in the word {w}?", str(len(w)))]


def _count_words(rng: np.random.Generator) -> list[tuple[str, str]]:
    words = [_pick(rng, WORDS) for _ in range(int(rng.integers(2, 8)))]
    return [(f'How many words are in "{" ".join(words)}"?', str(len(words)))]


def _number_fact(rng: np.random.Generator) -> list[tuple[str, str]]:
    a, b = (int(x) for x in rng.choice(20, 2, replace=False))
    shape, thing = _pick(rng, list(SIDE_COUNT)), _pick(rng, list(THINGS))
    return [_pick(rng, [(f"What number comes after {a}?", str(a + 1)),
                        (f"Which is bigger, {a} or {b}?", str(max(a, b))),
                        (f"How many sides does a {shape} have?", str(SIDE_COUNT[shape])),
                        (f"What color is {thing}?", THINGS[thing])])]


def _instruction(rng: np.random.Generator) -> list[tuple[str, str]]:
    words = [_pick(rng, WORDS) for _ in range(int(rng.integers(2, 5)))]
    nums = [int(x) for x in rng.choice(20, int(rng.integers(3, 6)), replace=False)]
    k = int(rng.integers(2, 5))
    return [_pick(rng, [
        (f"Write the word {words[0]} in capital letters.", words[0].upper()),
        (f"Reverse the order of these words: {' '.join(words)}", " ".join(words[::-1])),
        (f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}",
         ", ".join(map(str, sorted(nums)))),
        (f"Name {NUMBERS[k]} colors.", ", ".join(str(c) for c in rng.choice(list(COLORS), k, replace=False))),
        (f"Tell me a short story about a {_pick(rng, list(COLORS))} {_pick(rng, TOYS)}.", " ".join(_story(rng))),
        ("Describe a scene with a few shapes.", describe(sample_scene(rng))),
    ])]


TEXT_QA = (_arith, _mix, _spell, _count_words, _number_fact)


def text_conversation(rng: np.random.Generator, chat: bool = False) -> list[dict[str, str]]:
    """1 to 3 exchanges with no image; `chat` adds instructions and greetings (the ShareGPT style)."""
    pool = TEXT_QA + ((_instruction, _instruction) if chat else ())
    turns = [("Hi!", "Hello! How can I help you today?")] if chat and rng.random() < 0.15 else []
    for _ in range(int(rng.integers(1, 4))):
        turns += _pick(rng, pool)(rng)
    if chat and rng.random() < 0.15:
        turns.append(("Thank you!", "You're welcome!"))
    return [m for q, a in turns for m in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _story(rng: np.random.Generator) -> list[str]:
    (n1, p1), (n2, _) = (list(NAMES.items())[int(i)] for i in rng.choice(len(NAMES), 2, replace=False))
    c1, c2 = (str(c) for c in rng.choice(list(COLORS), 2, replace=False))
    t1, t2 = _pick(rng, TOYS), _pick(rng, TOYS)
    return [f"{n1} had a {c1} {t1}.", f"One day {p1} took the {t1} to the {_pick(rng, PLACES)}.",
            f"There {p1} met {n2}, who had a {c2} {t2}.", f"They put the {c1} {t1} next to the {c2} {t2}.",
            f'{n2} counted them: "One, two!"', "Now there were two toys, and both were bright.",
            "They played until the sun went down.", f"Then {n1} went home with the {c1} {t1}."]


def _scene_prose(rng: np.random.Generator) -> list[str]:
    scene = sample_scene(rng)
    objs = scene.objects
    out = [f"In the picture there {'is' if len(objs) == 1 else 'are'} {NUMBERS[len(objs)]} "
           f"{'shape' if len(objs) == 1 else 'shapes'} on a dark background."]
    out += [_cap(f"a {o.phrase} is {_where(scene, o)}.") for o in objs]
    big = sum(o.size == "large" for o in objs)
    return out + [f"{_cap(NUMBERS[big])} of them {'is' if big == 1 else 'are'} large."]


def _fact(rng: np.random.Generator) -> str:
    (a, b), c = list(MIXES.items())[int(rng.integers(len(MIXES)))]
    x, y = (int(v) for v in rng.integers(0, 10, 2))
    s, t = _pick(rng, list(SIDE_COUNT)), _pick(rng, list(THINGS))
    return _pick(rng, [f"Mixing {a} and {b} makes {c}.", f"{_cap(t)} is {THINGS[t]}.",
                       f"A {s} has {NUMBERS[SIDE_COUNT[s]]} sides.", "A circle is round and has no corners.",
                       "A star has five points.", "A cross is made of two bars.",
                       f"{_cap(NUMBERS[x])} plus {NUMBERS[y]} is {NUMBERS[x + y]}.",
                       f"{_cap(NUMBERS[x + 1])} comes after {NUMBERS[x]}.",
                       f"A large {_pick(rng, SHAPES)} is bigger than a small one."])


def _counting(rng: np.random.Generator) -> str:
    a, b = (int(v) for v in rng.integers(1, 6, 2))
    (c1, c2), (s1, s2) = rng.choice(list(COLORS), 2, replace=False), rng.choice(SHAPES, 2, replace=False)
    start = int(rng.integers(1, 10))
    return _pick(rng, [", ".join(NUMBERS[start:start + int(rng.integers(3, 7))]).capitalize() + ".",
                       f"There are {NUMBERS[a]} {c1} {PLURALS[s1] if a > 1 else s1} and {NUMBERS[b]} {c2} "
                       f"{PLURALS[s2] if b > 1 else s2}, so there are {NUMBERS[a + b]} shapes in all.",
                       f"I can see {NUMBERS[a]} {PLURALS[s1] if a > 1 else s1}."])


def corpus_document(rng: np.random.Generator) -> str:
    """One pretraining document of 1 to 8 sentences: scene prose, facts, counting, or a short story."""
    n, kind = int(rng.integers(1, 9)), int(rng.integers(4))
    if kind == 0:
        sentences = _scene_prose(rng)
    elif kind == 1:
        sentences = list(dict.fromkeys(_fact(rng) for _ in range(n)))  # no sentence twice in a document
    elif kind == 2:
        sentences = list(dict.fromkeys(_counting(rng) for _ in range(n)))
    else:
        sentences = _story(rng)
    return " ".join(sentences[:n])
