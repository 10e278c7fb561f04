#!/usr/bin/env python3
"""Build a second synthetic Korean corpus, unlike data/demo, to tune and check the CPU recipes on.

`data/demo` reads legal text (the constitution, bills) with 6 espeak-ng voices at 140-190 wpm and
30-40 dB SNR. A recipe tuned only there can learn that corpus and nothing else, so this one differs
in every way the recipes could overfit to:

- text domain: everyday spoken sentences (meals, errands, family, weather, work) built from a word
  bank written here, polite endings, questions; the particles follow the batchim of each word;
- voices: 22 espeak-ng variants, none of the demo's six (klatt variants, named voices, m2/m4/...);
- speaking rate 125-195 wpm, pitch 20-80, speech level -26 to -14 dBFS;
- noise: white or pink at 12-32 dB SNR (the demo's is 30-40), stored at full 16-bit precision;
- syllables unseen in training: the bank's held-out words appear only in dev (its own set) and in
  test (another set), so about a fifth of the test's syllable tokens never occur in train.

Nothing here is committed as audio: the corpus is generated on demand (about 2 minutes on 2 cores
for the default sizes), by `bench/recipe.py` and by hand:

    python scripts/make_second_corpus.py --out /tmp/second            # 900/560/60/80 utterances
    kwav2vec finetune fit ... --data.train_manifest /tmp/second/train.jsonl ...

It reuses the demo generator's synthesis (espeak-ng, resampling, silence trim, level, noise) so that
the two corpora differ in what is drawn, not in how audio is made. Needs espeak-ng.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_demo_corpus as demo  # noqa: E402  (a sibling script, not a package)

SPLITS = demo.SPLITS
VOICES = (
    "ko+m2", "ko+m4", "ko+m5", "ko+m7", "ko+m8", "ko+f3", "ko+f5", "ko+klatt", "ko+klatt2",
    "ko+klatt3", "ko+klatt4", "ko+adam", "ko+david", "ko+edward", "ko+john", "ko+max", "ko+paul",
    "ko+rob", "ko+steph", "ko+linda", "ko+norbert", "ko+travis",
)
SPEED_WPM = (125, 195)
PITCH = (20, 80)
LEVEL_DBFS = (-26.0, -14.0)
NOISE_SNR_DB = (12.0, 32.0)

# --- the word bank: (word, kind); every word is Hangul syllables only --------------------------
TIMES = "오늘 어제 내일 아침에 저녁에 주말에 점심에 지난주에 다음주에 방금 요즘 가끔 매일 밤에 새벽에 이따가".split()
PEOPLE = "저 우리 친구 엄마 아빠 동생 언니 형 선생님 할머니 할아버지 사장님 학생들 이웃 손님 아이들 누나 오빠 남편 아내".split()
PLACES = ("집 학교 회사 시장 공원 식당 카페 도서관 병원 은행 편의점 백화점 지하철역 정류장 부엌 거실 마트 "
          "운동장 바닷가 산 교회 호텔 공항").split()
THINGS = ("밥 커피 책 사과 우유 빵 물 옷 신발 가방 영화 음악 숙제 편지 사진 김치 라면 과일 케이크 선물 "
          "자전거 창문 문 차 국 반찬 의자 시계 안경 컴퓨터 표 약 꽃").split()
VERBS = ("먹었어요 마셨어요 샀어요 봤어요 읽었어요 들었어요 만들었어요 찾았어요 좋아해요 기다려요 준비했어요 "
         "보냈어요 열었어요 닫았어요 가져왔어요 씻었어요 골랐어요 주문했어요 팔았어요 받았어요").split()
MOTION = "갔어요 왔어요 가요 와요 갈까요 가고 싶어요 다녀왔어요 들렀어요".split()
STATES = "비싸요 싸요 맛있어요 예뻐요 무거워요 커요 작아요 좋아요 필요해요 없어요 있어요 많아요".split()
WEATHER = "맑아요 흐려요 추워요 더워요 따뜻해요 시원해요 좋네요 이상해요".split()
COUNTS = "한 개 두 개 세 개 네 개 다섯 개 한 잔 두 잔 한 권 두 권 한 번 두 번".split("  ")
ADVERBS = "정말 아주 조금 너무 벌써 아직 같이 혼자 천천히 빨리 다시 먼저".split()
# held-out words: never in train or unlabeled text; one set for dev, another for test
HELD_DEV = "냄비 우체국 미용실 수영장 딸기 귤 장갑 양말 조카 삼촌 고쳤어요 빌렸어요 빨래했어요 끓였어요".split()
HELD_TEST = ("냉장고 세탁기 택시 약국 놀이터 박물관 떡볶이 햄버거 수박 숟가락 젓가락 휴대폰 노트북 우산 모자 "
             "강아지 고양이 이모 팀장님 간호사 경찰관 청소했어요 잃어버렸어요 깎았어요 심었어요 뛰었어요 "
             "흘렸어요 튀겼어요 쉬었어요 춤췄어요 헤엄쳤어요 편찮으세요").split()


def has_batchim(word: str) -> bool:
    return (ord(word[-1]) - 0xAC00) % 28 != 0


def topic(word: str) -> str:
    return word + ("은" if has_batchim(word) else "는")


def subject(word: str) -> str:
    return word + ("이" if has_batchim(word) else "가")


def obj(word: str) -> str:
    return word + ("을" if has_batchim(word) else "를")


def sentence(rng: random.Random, people, places, things, verbs) -> str:
    """One everyday sentence from one of several patterns, 6-20 syllables."""
    form = rng.randrange(7)
    t, p, pl, th = rng.choice(TIMES), rng.choice(people), rng.choice(places), rng.choice(things)
    if form == 0:
        words = [t, topic(p), pl + "에서", obj(th), rng.choice(verbs)]
    elif form == 1:
        words = [t, subject(p), pl + "에", rng.choice(MOTION)]
    elif form == 2:
        words = [pl + "의", subject(th), rng.choice(ADVERBS), rng.choice(STATES)]
    elif form == 3:
        words = [t, "날씨가", rng.choice(ADVERBS), rng.choice(WEATHER)]
    elif form == 4:
        words = [topic(p), obj(th), rng.choice(COUNTS), rng.choice(verbs)]
    elif form == 5:
        words = [subject(th), pl + "에", "있어요"] if rng.random() < 0.5 else [pl + "에", subject(th), "없어요"]
        words = [t] + words
    else:
        words = [topic(p), rng.choice(ADVERBS), pl + "에서", obj(th), rng.choice(verbs)]
    return " ".join(" ".join(words).split())


def held_banks(held: list[str]) -> dict[str, list[str]]:
    verbs = [w for w in held if w.endswith("요")]
    nouns = [w for w in held if not w.endswith("요")]
    half = len(nouns) // 2
    return {"verbs": verbs, "things": nouns[:half], "places_people": nouns[half:]}


def make_texts(counts: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Distinct texts per split: train/unlabeled from the main bank, dev/test mixing in their own
    held-out words (every dev/test sentence carries at least one) with the main bank."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(n: int, held: list[str] | None) -> list[str]:
        out: list[str] = []
        banks = held_banks(held) if held else None
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 200 * n:
                raise SystemExit(f"the word bank cannot give {n} distinct sentences")
            people, places, things, verbs = PEOPLE, PLACES, THINGS, VERBS
            if banks is not None:  # each slot from the held-out words with probability 0.6
                if rng.random() < 0.6:
                    things = banks["things"]
                if rng.random() < 0.6:
                    verbs = banks["verbs"]
                if rng.random() < 0.6:
                    places = people = banks["places_people"]
            text = sentence(rng, people, places, things, verbs)
            n_syl = len(demo.syllables(text))
            if text in seen or not demo.MIN_SYLLABLES <= n_syl <= demo.MAX_SYLLABLES:
                continue
            if banks is not None and not any(w in text for w in held):
                continue
            seen.add(text)
            out.append(text)
        return out

    return {
        "test": draw(counts["test"], HELD_TEST),
        "dev": draw(counts["dev"], HELD_DEV),
        "train": draw(counts["train"], None),
        "unlabeled": draw(counts["unlabeled"], None),
    }


def draw_plans(splits: dict[str, list[str]], out_dir: Path, seed: int) -> dict[str, list[demo.UtterancePlan]]:
    rng = random.Random(seed + 1)
    plans = {}
    for split in SPLITS:
        plans[split] = [
            demo.UtterancePlan(
                uid=f"second_{split}_{i:04d}", text=text,
                path=str(out_dir / "audio" / split / f"second_{split}_{i:04d}.flac"),
                voice=rng.choice(VOICES), speed=rng.randint(*SPEED_WPM), pitch=rng.randint(*PITCH),
                level_dbfs=round(rng.uniform(*LEVEL_DBFS), 2), noise=rng.choice(("white", "pink")),
                snr_db=round(rng.uniform(*NOISE_SNR_DB), 2),
                pad_before=round(rng.uniform(0.05, 0.35), 3), pad_after=round(rng.uniform(0.05, 0.35), 3),
                noise_seed=rng.getrandbits(32),
            )
            for i, text in enumerate(splits[split], start=1)
        ]
    return plans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (manifests, audio/, vocabularies)")
    parser.add_argument("--seed", type=int, default=0)
    for split, default in (("unlabeled", 900), ("train", 560), ("dev", 60), ("test", 80)):
        parser.add_argument(f"--{split}", type=int, default=default, help=f"{split} utterances (default {default})")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--dry-run", action="store_true", help="print the texts' statistics; write nothing")
    args = parser.parse_args(argv)
    started = time.time()
    out_dir = Path(args.out).resolve()
    counts = {split: getattr(args, split) for split in SPLITS}
    splits = make_texts(counts, args.seed)
    demo.check_against_normalizer(t for texts in splits.values() for t in texts)
    train_syllables = {s for t in splits["train"] for s in demo.syllables(t)}
    for split in ("dev", "test"):
        share, tokens, types = demo.unseen_share(splits[split], train_syllables)
        print(f"{split}: {share:.1%} of syllable tokens unseen in train ({tokens} tokens, {types} types)")
    if args.dry_run:
        for split in SPLITS:
            print(f"  {split}: {len(splits[split])}, e.g. {splits[split][:3]}")
        return 0
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: install it (apt-get install espeak-ng) to synthesize the corpus")

    demo.SIGNIFICANT_BITS = 16  # nothing is committed, so no rounding below the noise (read by render)
    plans = draw_plans(splits, out_dir, args.seed)
    everything = [plan for split in SPLITS for plan in plans[split]]
    with multiprocessing.get_context("fork").Pool(args.jobs, initializer=demo._worker_init) as pool:
        results = {uid: n for uid, n, _ in pool.imap(demo.synthesize, everything, chunksize=8)}
    for split in SPLITS:
        rows = []
        for plan in plans[split]:
            row = {"id": plan.uid, "audio": os.path.relpath(plan.path, out_dir),
                   "num_samples": results[plan.uid], "sample_rate": demo.SAMPLE_RATE}
            if split in demo.LABELED:
                row.update(text=plan.text, norm=plan.text)
            rows.append(row)
        demo.write_jsonl(out_dir / f"{split}.jsonl", rows)
        hours = sum(r["num_samples"] for r in rows) / demo.SAMPLE_RATE / 3600
        print(f"  {split:>9}: {len(rows)} utterances, {hours:.3f} h")
    demo.write_vocabularies(out_dir, splits["train"])
    print(f"wrote {out_dir} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
