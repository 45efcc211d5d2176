-- The Eco² character catalog: 13 characters, 이코 (char-eco) is the default persona.
-- Facts (codes, names, aliases, waste-category labels, asset codes) come from the original
-- system's character_names.yaml (MIT); descriptions are ours.
CREATE TABLE character_catalog (
    code        text PRIMARY KEY,
    name        text NOT NULL,
    aliases     text[] NOT NULL DEFAULT '{}',
    category    text NOT NULL,          -- eco2.character.v1.WasteCategory name without prefix
    match_label text NOT NULL,
    image_code  text NOT NULL,
    description text NOT NULL DEFAULT '',
    is_default  boolean NOT NULL DEFAULT false,
    sort_order  int NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX character_catalog_one_default ON character_catalog (is_default) WHERE is_default;
CREATE UNIQUE INDEX character_catalog_category ON character_catalog (category) WHERE NOT is_default;

INSERT INTO character_catalog (code, name, aliases, category, match_label, image_code, description, is_default, sort_order) VALUES
('char-eco',          '이코',   ARRAY['이코','에코','eco'],                              'UNSPECIFIED', '대표 캐릭터',   'eco',            'Eco²의 대표 캐릭터. 분리배출 길잡이로 모든 대화를 함께합니다.', true, 0),
('char-petty',        '페티',   ARRAY['페티','페트','petty','pet'],                      'CLEAR_PET',   '무색페트병',    'pet',            '투명한 무색페트병 캐릭터. 라벨을 떼고 납작하게 눌러 주면 좋아해요.', false, 1),
('char-metally',      '메탈리', ARRAY['메탈리','메탈','캔','metally','metal'],           'METAL',       '금속류',        'metal',          '캔과 고철을 대표하는 금속류 캐릭터.', false, 2),
('char-paepy',        '페이피', ARRAY['페이피','종이','paepy','paper'],                  'PAPER',       '종이',          'paper',          '신문지, 골판지, 책자를 대표하는 종이 캐릭터.', false, 3),
('char-plea',         '플리',   ARRAY['플리','플라스틱','plea','plastic'],               'PLASTIC',     '플라스틱류',    'plastic',        '플라스틱 용기를 대표하는 캐릭터. 내용물을 비우고 헹궈 주세요.', false, 4),
('char-bini',         '비니',   ARRAY['비니','비닐','bini','vinyl'],                     'VINYL',       '비닐류',        'vinyl',          '비닐 포장재를 대표하는 캐릭터.', false, 5),
('char-foamy',        '폼이',   ARRAY['폼이','스티로폼','폼','foamy','styrofoam'],       'STYROFOAM',   '발포합성수지',  'styrofoam',      '스티로폼(발포합성수지)을 대표하는 캐릭터.', false, 6),
('char-glassy',       '글래시', ARRAY['글래시','유리','유리병','glassy','glass'],        'GLASS',       '유리병',        'glass',          '유리병을 대표하는 캐릭터.', false, 7),
('char-factory',      '팩토리', ARRAY['팩토리','종이팩','팩','factory'],                 'PAPER_PACK',  '종이팩',        'paper_products', '우유팩, 두유팩 같은 종이팩을 대표하는 캐릭터.', false, 8),
('char-battery',      '배리',   ARRAY['배리','배터리','건전지','battery'],               'BATTERY',     '전지',          'battery',        '건전지와 충전지를 대표하는 캐릭터. 전용 수거함으로!', false, 9),
('char-lighty',       '라이티', ARRAY['라이티','형광등','전구','lighty','lighting'],     'LIGHTING',    '조명제품',      'lighting',       '형광등과 LED 조명을 대표하는 캐릭터.', false, 10),
('char-cotton',       '코튼',   ARRAY['코튼','의류','옷','cotton','clothes'],            'CLOTHING',    '의류및원단',    'clothes',        '의류와 원단을 대표하는 캐릭터.', false, 11),
('char-eb7429f0523f', '일렉',   ARRAY['일렉','전자제품','가전','폐가전','elec','electronic'], 'ELECTRONICS', '전기전자제품', 'monitor',      '전기·전자제품을 대표하는 캐릭터.', false, 12);
